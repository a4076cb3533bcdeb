"""Add to the denoising loop of ready-made nodes, through switches and sequences.

A stand-in for path editing (`node.insert(x, before="text2img > denoise > predict_noise")`),
built on the public `Sequential.insert` / `replace` and `attrs.evolve` of loops and
switches; once paths reach into loops and switches, each call becomes one line of those.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

import modblocks as mb

__all__ = ["edit_denoise", "edit_sequences", "replace_block"]

BodyEdit = Callable[[mb.Sequential], mb.Sequential]


def edit_denoise(
    node: mb.Node, body: BodyEdit, *, before: mb.Node | None = None, loop: str = "denoise"
) -> mb.Node:
    """Return *node* with every loop named *loop* given a new body, `body(old_body)`.

    Args:
        node: A ready-made node (a sequence, or a switch of sequences).
        body: Makes the new loop body from the old one (`Sequential.insert`, `replace`).
        before: A node to insert before each such loop, in the sequence that holds it.
        loop: The name of the loops to edit.

    Returns:
        The edited copy; *node* is unchanged.
    """
    if isinstance(node, mb.Switch):
        branches = tuple(
            (label, edit_denoise(n, body, before=before, loop=loop)) for label, n in node.branches
        )
        default = (
            None
            if node.default is None
            else edit_denoise(node.default, body, before=before, loop=loop)
        )
        return attrs.evolve(node, branches=branches, default=default)
    if not isinstance(node, mb.Sequential):
        return node
    edited = node
    for name in node.names:
        child = node[name]
        if isinstance(child, mb.Loop) and name == loop:
            assert isinstance(child.body, mb.Sequential)
            edited = edited.replace(name, attrs.evolve(child, body=body(child.body)))
            if before is not None:
                edited = edited.insert(before, before=name)
        elif isinstance(child, mb.Sequential | mb.Switch):
            edited = edited.replace(name, edit_denoise(child, body, before=before, loop=loop))
    return edited


def replace_block(node: mb.Node, name: str, new: mb.Node) -> mb.Node:
    """Return *node* with every sub-block *name* of its sequences replaced by *new*.

    Looks through switches and sequences (not into loops); *new* keeps the old name.
    """
    if isinstance(node, mb.Switch):
        branches = tuple((label, replace_block(n, name, new)) for label, n in node.branches)
        default = None if node.default is None else replace_block(node.default, name, new)
        return attrs.evolve(node, branches=branches, default=default)
    if not isinstance(node, mb.Sequential):
        return node
    edited = node
    for child_name in node.names:
        child = node[child_name]
        if child_name == name:
            edited = edited.replace(child_name, new)
        elif isinstance(child, mb.Sequential | mb.Switch):
            edited = edited.replace(child_name, replace_block(child, name, new))
    return edited


def edit_sequences(node: mb.Node, edit: BodyEdit, *, holding: str = "denoise") -> mb.Node:
    """Return *node* with `edit(seq)` in place of each sequence holding a node *holding*.

    Looks through switches and sequences: for a switch of text-to-image, image-to-image and
    inpainting, *edit* sees each mode's sequence (the ones that hold the denoising loop).
    """
    if isinstance(node, mb.Switch):
        branches = tuple(
            (label, edit_sequences(n, edit, holding=holding)) for label, n in node.branches
        )
        default = (
            None if node.default is None else edit_sequences(node.default, edit, holding=holding)
        )
        return attrs.evolve(node, branches=branches, default=default)
    if not isinstance(node, mb.Sequential):
        return node
    if holding in node.names:
        return edit(node)
    edited = node
    for child_name in node.names:
        child = node[child_name]
        if isinstance(child, mb.Sequential | mb.Switch):
            edited = edited.replace(child_name, edit_sequences(child, edit, holding=holding))
    return edited
