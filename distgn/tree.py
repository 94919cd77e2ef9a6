"""Cluster tree over neurons: the neuron ordering, the binary tree and its map onto ranks.

The ordering (tree position -> user neuron index) depends only on the network, never on the number
of ranks, so every P sees the same neuron order. The tree splits index ranges: at the levels that
split ranks, in proportion to the number of ranks on each side (any P >= 1); below, in halves down
to the leaf size. Rank p owns the contiguous tree-order range of its subtree: its block rows.
Rank-local: nothing here calls MPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from distgn.domain import Domain
from distgn.errors import InputError

ORDERINGS = ("auto", "breakpoint", "foot", "angle", "parameters")


@dataclass(frozen=True)
class Node:
    """A tree node: tree-order index range ``[start, stop)``, children, and owning ranks."""

    id: int
    start: int
    stop: int
    level: int
    parent: int
    children: tuple[int, ...]
    rank_lo: int
    rank_hi: int

    @property
    def size(self) -> int:
        """Number of neurons under the node."""
        return self.stop - self.start

    @property
    def is_leaf(self) -> bool:
        """Whether the node has no children."""
        return not self.children

    @property
    def is_local(self) -> bool:
        """Whether a single rank owns the whole node."""
        return self.rank_hi - self.rank_lo == 1


@dataclass(frozen=True)
class ClusterTree:
    """Binary cluster tree over n neurons mapped onto ``n_ranks`` ranks, whole or as one rank
    holds it.

    A rank's tree (``rank`` set) holds the nodes above the ranks' subtrees, the root of every
    rank's subtree and the nodes of its own subtree, with their ids in the whole tree, and the
    ordering of its own range only: O(n/P + P) instead of O(n).

    Attributes
    ----------
    perm : ndarray of int
        ``perm[k - first]`` is the user index of the neuron at tree position k, for the positions
        held (all n, or the rank's range).
    nodes : tuple of Node
        The nodes held, parents before children (node 0, the root, first); ids are positions
        in the whole tree's preorder.
    n_ranks : int
        Number of ranks the top levels are split over.
    leaf_size : int
        Largest leaf.
    n : int
        Number of neurons.
    rank : int or None
        The rank whose tree this is; None for the whole tree.
    node_count : int
        Number of nodes of the whole tree.
    """

    perm: np.ndarray
    nodes: tuple[Node, ...]
    n_ranks: int
    leaf_size: int
    n: int
    rank: int | None = None
    node_count: int = 0

    @property
    def first(self) -> int:
        """Tree position of ``perm[0]``: 0, or the start of the rank's range."""
        return 0 if self.rank is None else self.rank_range(self.rank)[0]

    def users(self, start: int, stop: int) -> np.ndarray:
        """User indices of the tree positions ``[start, stop)`` (held by this tree)."""
        first = self.first
        if start < first or stop > first + self.perm.size:
            raise ValueError(
                f"tree positions [{start}, {stop}) are not held by rank {self.rank}'s tree"
            )
        return self.perm[start - first : stop - first]

    @property
    def iperm(self) -> np.ndarray:
        """Inverse permutation: ``iperm[user index] = tree position`` (whole trees only)."""
        if self.rank is not None:
            raise ValueError("iperm needs the whole tree (this tree holds one rank's part)")
        inv = np.empty_like(self.perm)
        inv[self.perm] = np.arange(self.perm.size)
        return inv

    @cached_property
    def _by_id(self) -> dict[int, Node]:
        return {nd.id: nd for nd in self.nodes}

    def node(self, node_id: int) -> Node:
        """The node with id ``node_id`` (KeyError when this rank's tree does not hold it)."""
        return self._by_id[node_id]

    @cached_property
    def _rank_roots(self) -> dict[int, Node]:
        """Root of every rank's subtree (one pass over the nodes, then O(1) per look-up)."""
        roots: dict[int, Node] = {}
        for nd in self.nodes:
            if nd.is_local and nd.rank_lo not in roots:
                roots[nd.rank_lo] = nd
        return roots

    def rank_root(self, rank: int) -> Node:
        """Root of the subtree owned by ``rank`` alone."""
        return self._rank_roots[rank]

    def rank_range(self, rank: int) -> tuple[int, int]:
        """Tree-order range ``[start, stop)`` of the block rows owned by ``rank``."""
        root = self.rank_root(rank)
        return root.start, root.stop

    def rank_offsets(self) -> np.ndarray:
        """Start of every rank's range, plus n at the end: shape (n_ranks + 1,)."""
        return np.array([self.rank_range(p)[0] for p in range(self.n_ranks)] + [self.n])

    def depth(self) -> int:
        """Number of levels below the root (of the whole tree)."""
        return max(
            root.level + _subtree_depth(root.size, self.leaf_size)
            for root in self._rank_roots.values()
        )


@lru_cache(maxsize=4096)
def _subtree_nodes(size: int, leaf_size: int) -> int:
    """Number of nodes of a rank's subtree over ``size`` neurons (halved down to the leaves)."""
    if size <= leaf_size:
        return 1
    half = size // 2
    return 1 + _subtree_nodes(half, leaf_size) + _subtree_nodes(size - half, leaf_size)


@lru_cache(maxsize=4096)
def _subtree_depth(size: int, leaf_size: int) -> int:
    """Levels below the root of a rank's subtree over ``size`` neurons."""
    return 0 if size <= leaf_size else 1 + _subtree_depth(size - size // 2, leaf_size)


def split_offsets(n: int, n_ranks: int) -> np.ndarray:
    """The rank ranges of ``build_tree`` without given offsets: each node over several ranks is
    split in proportion to the ranks on each side. Shape (n_ranks + 1,)."""
    offsets = np.zeros(n_ranks + 1, dtype=np.int64)
    offsets[-1] = n
    stack = [(0, n, 0, n_ranks)]
    while stack:
        start, stop, r0, r1 = stack.pop()
        if r1 - r0 < 2:
            continue
        left = (r1 - r0) // 2
        mid = start + int(round((stop - start) * left / (r1 - r0)))
        mid = min(max(mid, start + left), stop - (r1 - r0 - left))
        offsets[r0 + left] = mid
        stack += [(start, mid, r0, r0 + left), (mid, stop, r0 + left, r1)]
    return offsets


def build_tree(
    perm: np.ndarray,
    n_ranks: int,
    leaf_size: int,
    offsets: np.ndarray | None = None,
    rank: int | None = None,
) -> ClusterTree:
    """Cluster tree over ``perm`` with ``n_ranks`` rank subtrees and leaves <= ``leaf_size``.

    The rank ranges are ``split_offsets``, or ``[offsets[p], offsets[p + 1])`` when given (each
    nonempty). With ``rank``, the tree as that rank holds it (``ClusterTree``): ``perm`` is then
    the ordering of its range only, and ``offsets`` are required.
    """
    if rank is not None and offsets is None:
        raise ValueError("build_tree: a rank's tree needs the offsets of the rank ranges")
    n = int(perm.size) if rank is None else int(offsets[-1])
    if n_ranks < 1 or n < n_ranks:
        raise InputError(f"network.n = {n} is smaller than the number of ranks {n_ranks}")
    if leaf_size < 1:
        raise InputError(f"solver.leaf_size = {leaf_size} must be at least 1")
    if offsets is None:
        offsets = split_offsets(n, n_ranks)
    offsets = np.asarray(offsets, dtype=np.int64)
    if np.any(np.diff(offsets) < 1):
        raise InputError(
            f"{n} rows cannot be split over {n_ranks} ranks as {np.diff(offsets).tolist()}: "
            "every rank needs at least one"
        )
    if rank is not None and perm.size != offsets[rank + 1] - offsets[rank]:
        raise ValueError(
            f"build_tree: rank {rank} holds {offsets[rank + 1] - offsets[rank]} "
            f"positions, perm has {perm.size}"
        )
    nodes: list[dict] = []
    count = 0

    def add(start: int, stop: int, level: int, parent: int, r0: int, r1: int) -> int:
        nonlocal count
        nid = count
        count += 1
        record = dict(
            id=nid,
            start=start,
            stop=stop,
            level=level,
            parent=parent,
            children=(),
            rank_lo=r0,
            rank_hi=r1,
        )
        nodes.append(record)
        size = stop - start
        if r1 - r0 > 1:
            left_ranks = (r1 - r0) // 2
            mid = int(offsets[r0 + left_ranks])
            splits = ((start, mid, r0, r0 + left_ranks), (mid, stop, r0 + left_ranks, r1))
        elif size <= leaf_size:
            return nid
        elif rank is not None and r0 != rank:
            # another rank's subtree: its root only, and the ids its nodes take
            count += _subtree_nodes(size, leaf_size) - 1
            record["children"] = (nid + 1, nid + 1 + _subtree_nodes(size // 2, leaf_size))
            return nid
        else:
            mid = start + size // 2
            splits = ((start, mid, r0, r1), (mid, stop, r0, r1))
        record["children"] = tuple(add(a, z, level + 1, nid, p, q) for a, z, p, q in splits)
        return nid

    add(0, n, 0, -1, 0, n_ranks)
    return ClusterTree(
        np.asarray(perm, dtype=np.int64),
        tuple(Node(**nd) for nd in nodes),
        n_ranks,
        leaf_size,
        n,
        rank,
        count,
    )


def network_tree(
    domain: Domain, W: np.ndarray, b: np.ndarray, ordering: str, n_ranks: int, leaf_size: int
) -> ClusterTree:
    """The cluster tree of a network: ``neuron_order`` then ``build_tree``. Rank-local."""
    return build_tree(neuron_order(domain, W, b, ordering), n_ranks, leaf_size)


def neuron_order(
    domain: Domain, W: np.ndarray, b: np.ndarray, ordering: str = "auto"
) -> np.ndarray:
    """Ordering of neurons (tree position -> user index) by a geometric proxy.

    ``breakpoint`` (1D, the default there): sorted breakpoints ``-b/w``, ties by orientation.
    In 2D and up, recursive bisection (at the median, along the widest coordinate) of a proxy point:
    ``foot`` (the default): the foot of the perpendicular from the domain centre to the hyperplane;
    ``angle``: the hyperplane's (direction angle, signed offset), scaled to comparable extent;
    ``parameters``: the normalised parameters (w, b) / |w|.
    """
    if ordering == "auto":
        ordering = "breakpoint" if domain.dim == 1 else "foot"
    if ordering not in ORDERINGS:
        raise InputError(f"solver.ordering = {ordering!r} is not one of {', '.join(ORDERINGS)}")
    if domain.dim == 1:
        if ordering != "breakpoint":
            raise InputError(f"solver.ordering = {ordering!r} is for 2D; 1D uses 'breakpoint'")
        return np.lexsort((np.sign(W[:, 0]), -b / W[:, 0])).astype(np.int64)
    if ordering == "breakpoint":
        raise InputError("solver.ordering = 'breakpoint' is for 1D domains")
    norm = np.linalg.norm(W, axis=1)
    unit, offset = W / norm[:, None], b / norm
    center = domain.center
    if ordering == "foot":
        proxy = center - (unit @ center + offset)[:, None] * unit
    elif ordering == "angle":
        angle = np.arctan2(unit[:, 1], unit[:, 0]) if domain.dim == 2 else unit[:, :-1]
        radius = 0.5 * float(np.max(domain.bounds[:, 1] - domain.bounds[:, 0]))
        proxy = np.column_stack(
            [np.reshape(angle, (W.shape[0], -1)) * radius / np.pi, unit @ center + offset]
        )
    else:
        proxy = np.column_stack([unit, offset])
    return _bisection_order(proxy)


def _bisection_order(points: np.ndarray) -> np.ndarray:
    """Order points by recursive median bisection along the widest coordinate (a k-d ordering)."""
    order = np.arange(points.shape[0])
    stack = [(0, order.size)]
    while stack:
        start, stop = stack.pop()
        if stop - start <= 1:
            continue
        block = order[start:stop]
        axis = int(np.argmax(np.ptp(points[block], axis=0)))
        half = (stop - start) // 2
        part = np.argpartition(points[block, axis], half - 1) if half > 0 else np.arange(block.size)
        order[start:stop] = block[part]
        stack += [(start, start + half), (start + half, stop)]
    return order.astype(np.int64)
