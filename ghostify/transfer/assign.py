"""Which original filters become intrinsic, and which intrinsic map each ghost is made from.

Input: a cost matrix ``E[i, o]`` = relative error of rebuilding original map ``o`` from
original map ``i`` with one d x d depthwise filter (Eq. 3, Table 2), in [0, 1]. Output: m
intrinsic channels (quota m / groups per group, so the primary conv keeps its groups) and an
assignment of the n - m other channels to ghost slots, each intrinsic map feeding at most as
many ghosts as it has slots in the module (s - 1, fewer at the end when s does not divide n).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Assignment", "slot_capacities", "choose", "GREEDY_MAX_N"]

GREEDY_MAX_N = 128
CANDIDATES = 16  # cheapest candidate intrinsics kept per map when scanning pairs
SWAP_ROUNDS = 100


@dataclass
class Assignment:
    intrinsic: list[int]  # original channel of primary filter k (group order)
    ghost_of: dict[int, tuple[int, int]]  # original channel -> (intrinsic position k, cheap slot q)

    def channel_order(self, n: int, m: int) -> torch.Tensor:
        """order[o] = position of original channel o in the module's [intrinsic, ghosts] concat."""
        order = torch.empty(n, dtype=torch.long)
        for k, o in enumerate(self.intrinsic):
            order[o] = k
        for o, (_, q) in self.ghost_of.items():
            order[o] = m + q
        return order


def slot_capacities(n: int, m: int, s: int) -> list[int]:
    """Ghost slots of intrinsic k that survive the trim: positions m + k(s-1) + j < n."""
    return [sum(1 for j in range(s - 1) if m + k * (s - 1) + j < n) for k in range(m)]


def _greedy_intrinsics(E: torch.Tensor, m: int, s: int, group_of: list[int], quota: int) -> list[int]:
    """Facility location with a capacity: pick the map that best explains s-1 others, repeat."""
    n = E.shape[0]
    cur = torch.ones(n, dtype=E.dtype)  # error of each channel with the intrinsics picked so far
    chosen: list[int] = []
    taken = torch.zeros(n, dtype=torch.bool)
    group = torch.tensor(group_of)
    per_group = torch.zeros(int(group.max()) + 1, dtype=torch.long)
    k = max(s - 1, 1)
    for _ in range(m):
        gain_all = (cur.unsqueeze(0) - E).clamp_min(0)  # (candidate i, channel o)
        gain_all[:, taken] = 0
        gain_all.fill_diagonal_(0)
        top = gain_all.topk(min(k, n), dim=1).values.sum(1) + cur  # i itself becomes exact
        top[taken | (per_group[group] >= quota)] = -1.0
        i = int(top.argmax())
        chosen.append(i)
        taken[i] = True
        per_group[group[i]] += 1
        best = gain_all[i].topk(min(k, n)).indices
        cur[best] = torch.minimum(cur[best], E[i, best])
        cur[i] = 0.0
    return chosen


def _paired_intrinsics(E: torch.Tensor, m: int, s: int, group_of: list[int], quota: int) -> list[int]:
    """The same choice for wide layers, from the cheapest pairs first (one sort, not m passes).

    Walk the pairs (i, o) by rising error: o becomes a ghost of i when o is still free and i is
    (or may still become) an intrinsic map with a free slot. Maps left over become intrinsic
    where their group still needs some. About as good as the greedy above (a few % higher total
    error on trained layers, docs/transfer.md) and fast at n = 2048.
    """
    n = E.shape[0]
    k = max(s - 1, 1)
    role = [0] * n  # 0 free, 1 intrinsic, 2 ghost
    slots = [0] * n
    per_group = [0] * (max(group_of) + 1)
    count = placed = 0
    cost = E.clone()
    cost.fill_diagonal_(float("inf"))
    for i, o in _cheapest_pairs(cost):
        if role[o] != 0 or role[i] == 2:
            continue
        if role[i] == 0:
            if count >= m or per_group[group_of[i]] >= quota:
                continue
            role[i], slots[i], count = 1, k, count + 1
            per_group[group_of[i]] += 1
        if slots[i] == 0:
            continue
        role[o], slots[i], placed = 2, slots[i] - 1, placed + 1
        if count + placed == n:
            break
    return _fill_quota(E, role, group_of, quota)


def _cheapest_pairs(cost: torch.Tensor, per_column: int = CANDIDATES) -> list[tuple[int, int]]:
    """(row, column) pairs by rising cost, each column's ``per_column`` cheapest rows only.

    A map is rebuilt from one of its few best candidates in practice; keeping those alone makes
    the scan n x 16 long instead of n^2 (the choice is then finished by the fill-ups after it).
    """
    rows, cols = cost.shape
    per_column = min(per_column, rows)
    values, idx = cost.topk(per_column, dim=0, largest=False)  # (per_column, cols)
    order = values.flatten().argsort()
    flat_rows = idx.flatten()[order].tolist()
    flat_cols = (order % cols).tolist()
    return [(r, c) for r, c in zip(flat_rows, flat_cols, strict=True)]


def _fill_quota(E: torch.Tensor, role: list[int], group_of: list[int], quota: int) -> list[int]:
    """Make each group hold exactly ``quota`` intrinsic maps: free maps first, then the worst-served ghosts."""
    n = len(role)
    chosen = [i for i in range(n) if role[i] == 1]
    for g in range(max(group_of) + 1):
        have = sum(1 for i in chosen if group_of[i] == g)
        free = [o for o in range(n) if group_of[o] == g and role[o] == 0]
        ghosts = sorted((o for o in range(n) if group_of[o] == g and role[o] == 2),
                        key=lambda o: -float(E[chosen, o].min()) if chosen else 0.0)
        for o in (free + ghosts)[: max(0, quota - have)]:
            role[o] = 1
            chosen.append(o)
    return chosen


def _assign(E: torch.Tensor, intrinsic: list[int], caps: list[int], n: int) -> dict[int, int]:
    """Every other channel to one intrinsic position, cheapest pairs first, respecting capacity."""
    chosen = set(intrinsic)
    ghosts = [o for o in range(n) if o not in chosen]
    sub = E[intrinsic][:, ghosts]  # (m, g)
    left = list(caps)
    owner: dict[int, int] = {}
    for k, j in _cheapest_pairs(sub):
        o = ghosts[j]
        if o in owner or left[k] == 0:
            continue
        owner[o] = k
        left[k] -= 1
        if len(owner) == len(ghosts):
            return owner
    for j, o in enumerate(ghosts):  # whose few best candidates were all full: the best one with room
        if o not in owner:
            room = torch.tensor([c > 0 for c in left])
            k = int(torch.where(room, sub[:, j], torch.full_like(sub[:, j], float("inf"))).argmin())
            owner[o] = k
            left[k] -= 1
    return owner


def _improve_swaps(E: torch.Tensor, intrinsic: list[int], owner: dict[int, int], rounds: int = SWAP_ROUNDS) -> None:
    """Local search: exchange the intrinsics of two ghosts while that lowers the total error."""
    ghosts = list(owner)
    if len(ghosts) < 2:
        return
    g = torch.tensor(ghosts)
    for _ in range(rounds):
        k = torch.tensor([owner[o] for o in ghosts])
        src = torch.tensor(intrinsic)[k]  # intrinsic channel of each ghost
        cost_now = E[src, g]  # (g,)
        cross = E[src.unsqueeze(1), g.unsqueeze(0)]  # cross[a, b] = E[intrinsic of a, ghost b]
        delta = cross + cross.T - cost_now.unsqueeze(1) - cost_now.unsqueeze(0)
        a, b = divmod(int(delta.argmin()), len(ghosts))
        if float(delta[a, b]) >= -1e-6:
            break
        owner[ghosts[a]], owner[ghosts[b]] = owner[ghosts[b]], owner[ghosts[a]]


def choose(E: torch.Tensor, n: int, m: int, s: int, groups: int = 1) -> Assignment:
    """Intrinsic channels and the ghost slot of every other channel for cost matrix ``E`` (n x n)."""
    E = E.detach().double().clone().clamp(0.0, 1.0)
    E.fill_diagonal_(0.0)
    per_old, quota = n // groups, m // groups
    group_of = [o // per_old for o in range(n)]
    # the greedy is the better optimiser but costs m passes over n x n: fine up to a few hundred maps
    pick = _greedy_intrinsics if n <= GREEDY_MAX_N else _paired_intrinsics
    chosen = pick(E, m, s, group_of, quota)
    chosen.sort(key=lambda o: (group_of[o], o))  # primary filter k must read group k // quota
    caps = slot_capacities(n, m, s)
    owner = _assign(E, chosen, caps, n)
    _improve_swaps(E, chosen, owner)
    used = [0] * m
    ghost_of: dict[int, tuple[int, int]] = {}
    for o in sorted(owner):
        k = owner[o]
        ghost_of[o] = (k, k * (s - 1) + used[k])
        used[k] += 1
    return Assignment(intrinsic=chosen, ghost_of=ghost_of)
