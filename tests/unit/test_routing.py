"""Routing as one value (fo.Routing) and the routing table as a value that prints itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import filtered_optax as fo

# PARAMS' "layers" stack is declared in some calls only; the undeclared calls warn.
pytestmark = pytest.mark.filterwarnings("ignore:Muon routing")

S = jax.ShapeDtypeStruct
PARAMS = {
    "embed": {"embedding": S((10, 4), jnp.float32)},
    "layers": {"mlp": {"kernel": S((3, 4, 8), jnp.float32), "bias": S((3, 8), jnp.float32)}},
    "head": {"kernel": S((8, 10), jnp.float32)},
}


def test_routing_table_prints_nothing_and_str_is_one_table(capsys):
    table = fo.routing_table(PARAMS, stacked=("layers",))
    assert capsys.readouterr().out == ""
    text = str(table)
    lines = text.splitlines()
    assert lines[0].split() == ["path", "shape", "route", "matrix", "scale", "why"]
    assert len(lines) == 1 + len(jax.tree.leaves(PARAMS))
    assert "[" not in text and "RouteRow" not in text  # a table, not a list repr
    print(table)
    assert capsys.readouterr().out == text + "\n"


def test_routing_table_is_a_sequence_of_rows():
    table = fo.routing_table(PARAMS, stacked=("layers",))
    rows = {r.path: r for r in table}
    assert isinstance(table[0], fo.RouteRow) and len(table) == 4
    assert rows["layers/mlp/kernel"].matrix == "3 × 4 × 8"
    assert rows["head/kernel"].route == "adam"
    assert [r.path for r in table[:2]] == ["embed/embedding", "head/kernel"]


def test_routing_table_html_for_notebooks():
    html = fo.routing_table(PARAMS)._repr_html_()
    assert html.startswith("<table>") and html.endswith("</table>")
    assert html.count("<tr>") == 1 + len(jax.tree.leaves(PARAMS))


def test_print_table_keyword_still_prints(capsys):
    fo.routing_table(PARAMS, print_table=True)
    assert capsys.readouterr().out.startswith("path")


def test_routing_value_equals_the_keywords():
    rule = lambda names, shape: "adam" if names[0] == "layers" else None  # noqa: E731
    for kw in (
        {"stacked": ("layers",)},
        {"stacked": "layers", "per_head": True},
        {"labels": rule},
        {"head_names": ("HEAD",), "embed_names": ()},
    ):
        routing = fo.Routing(**kw)
        assert fo.muon_labels(PARAMS, routing=routing) == fo.muon_labels(PARAMS, **kw)
        assert fo.muon_specs(PARAMS, routing=routing) == fo.muon_specs(PARAMS, **kw)
        assert str(fo.routing_table(PARAMS, routing=routing)) == str(fo.routing_table(PARAMS, **kw))


def test_stacked_routing_reaches_muon_one_matrix_per_layer():
    params = {"layers": {"mlp": {"kernel": jnp.zeros((3, 4, 8))}}}
    grads = {"layers": {"mlp": {"kernel": jax.random.normal(jax.random.key(0), (3, 4, 8))}}}
    tx = fo.muon(1e-2, stacked=("layers",))
    updates, _ = tx.update(grads, tx.init(params), params)
    got = updates["layers"]["mlp"]["kernel"]
    for i in range(3):  # step 1: U is proportional to G, W = 0 so no weight decay
        o = fo.newton_schulz(grads["layers"]["mlp"]["kernel"][i], coefficients="polar_express")
        assert jnp.allclose(got[i], -1e-2 * 0.2 * jnp.sqrt(8.0) * o, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"routing": fo.Routing(), "stacked": ("layers",)}, "not both"),
        ({"stacks": ("layers",)}, "stacks"),
        ({"routing": {"stacked": ("layers",)}}, "fo.Routing"),
    ],
)
def test_bad_routing_arguments_raise_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        fo.muon_labels(PARAMS, **kwargs)
