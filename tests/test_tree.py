"""Cluster tree: orderings, proportional rank splits, leaf sizes."""

from __future__ import annotations

import numpy as np
import pytest

from distgn.domain import box, interval
from distgn.errors import InputError
from distgn.network import initial_network
from distgn.tree import build_tree, neuron_order, split_offsets


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 5, 7])
def test_rank_subtrees_partition_in_proportion(ranks):
    n, leaf = 1000, 16
    tree = build_tree(np.arange(n), ranks, leaf)
    offsets = tree.rank_offsets()
    assert offsets[0] == 0 and offsets[-1] == n and np.all(np.diff(offsets) > 0)
    # Proportional split: every rank gets n / P neurons up to rounding at each rank level.
    assert np.all(np.abs(np.diff(offsets) - n / ranks) <= np.log2(ranks) + 1)
    for node in tree.nodes:
        if node.children:
            a, z = (tree.nodes[c] for c in node.children)
            assert (a.start, z.stop, a.stop) == (node.start, node.stop, z.start)
            assert a.rank_lo == node.rank_lo and z.rank_hi == node.rank_hi
        else:
            assert node.size <= leaf and node.is_local
    leaves = sorted((nd.start, nd.stop) for nd in tree.nodes if nd.is_leaf)
    assert leaves[0][0] == 0 and leaves[-1][1] == n
    assert all(a[1] == z[0] for a, z in zip(leaves[:-1], leaves[1:], strict=True))


def test_too_many_ranks():
    with pytest.raises(InputError, match="network.n = 3 is smaller than the number of ranks 4"):
        build_tree(np.arange(3), 4, 8)


def test_1d_order_sorts_breakpoints():
    net = initial_network(interval(0, 1), 200, "random", seed=1, orientation="random")
    perm = neuron_order(interval(0, 1), net.W, net.b)
    t = net.breakpoints()[perm]
    assert np.all(np.diff(t) >= 0)


@pytest.mark.parametrize("ordering", ["foot", "angle", "parameters"])
def test_2d_orderings_are_permutations_and_cluster(ordering):
    dom = box([[0, 1], [0, 1]])
    net = initial_network(dom, 256, "random", seed=2)
    perm = neuron_order(dom, net.W, net.b, ordering)
    assert np.array_equal(np.sort(perm), np.arange(256))
    # The two halves of a bisection ordering occupy separated regions of the proxy space.
    if ordering == "foot":
        unit = net.W / np.linalg.norm(net.W, axis=1)[:, None]
        off = net.b / np.linalg.norm(net.W, axis=1)
        foot = dom.center - (unit @ dom.center + off)[:, None] * unit
        left, right = foot[perm[:128]], foot[perm[128:]]
        axis = int(np.argmax(np.ptp(foot, axis=0)))
        assert left[:, axis].max() <= right[:, axis].min()


@pytest.mark.parametrize("n", [1, 7, 64, 1000, 4099])
@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
@pytest.mark.parametrize("leaf", [1, 16])
def test_rank_tree_is_its_part_of_the_whole_tree(n, ranks, leaf):
    """A rank's tree holds exactly the whole tree's nodes above the ranks, every rank's root and
    its own subtree, with the same ids, counts and depth, and the ordering of its range only."""
    if n < ranks:
        return
    rng = np.random.default_rng(n + ranks)
    perm = rng.permutation(n)
    layouts = [None]
    if n >= 2 * ranks:
        cuts = np.sort(rng.choice(np.arange(1, n), ranks - 1, replace=False))
        layouts.append(np.concatenate([[0], cuts, [n]]))
    for given in layouts:
        whole = build_tree(perm, ranks, leaf, given)
        offsets = whole.rank_offsets()
        if given is None:
            assert np.array_equal(offsets, split_offsets(n, ranks))
        assert whole.node_count == len(whole.nodes)
        for p in range(ranks):
            lo, hi = offsets[p], offsets[p + 1]
            part = build_tree(perm[lo:hi], ranks, leaf, offsets, rank=p)
            expected = [
                nd
                for nd in whole.nodes
                if not nd.is_local or nd == whole.rank_root(nd.rank_lo) or nd.rank_lo == p
            ]
            assert list(part.nodes) == expected
            assert part.node_count == whole.node_count and part.n == n
            assert part.depth() == whole.depth()
            assert np.array_equal(part.rank_offsets(), offsets)
            assert np.array_equal(part.users(lo, hi), perm[lo:hi])
            assert part.first == lo
            assert len(part.nodes) <= 2 * ranks + 2 * (hi - lo)
            if ranks > 1:
                with pytest.raises(ValueError, match="not held"):
                    part.users(0, n)
