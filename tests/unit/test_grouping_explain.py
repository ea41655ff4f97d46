"""Explanations and overrides as pure functions: slots agree with the template, merges and splits resolve."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from erdu_tasks.ingest.detect.fingerprint import MASK, fingerprint, mask, slots
from erdu_tasks.ingest.grouping import Overrides
from tests.unit.test_fingerprint import render, template_and_two_fillings

_pieces = st.sampled_from(["user ", "User bob by ", "a@b.io", "http://x.io/p", "k=v", "'q'", '"d"', "10.0.0.1:80",
                           "/var/log", "C:\\x", "Jul 26 05:47:42", "2024-05-01", "3 ms", "()", "::1", " ", "x7", "-"])
lines = st.one_of(template_and_two_fillings().map(lambda c: render(c[0], c[1])), st.text(max_size=200),
                  st.lists(st.one_of(_pieces, st.text(max_size=4)), max_size=12).map("".join))


@settings(max_examples=300, deadline=None)
@given(lines)
def test_the_explained_template_is_the_template_and_each_slot_is_text_of_the_message(line):
    # slots() runs every rule; mask() only those whose characters the line holds: they must agree.
    template, found = slots(line)
    assert template == mask(line)
    assert len(found) == template.count(MASK)
    assert all(s.text and s.text in line and s.rules for s in found)


@settings(max_examples=30, deadline=None)
@given(st.lists(lines, min_size=1, max_size=30), st.lists(lines, max_size=30))
def test_keys_are_stable_at_arrival_later_lines_never_change_an_earlier_key(earlier, later):
    at_arrival = [fingerprint(line, "svc").key for line in earlier]
    for line in later:
        fingerprint(line, "svc")
    assert [fingerprint(line, "svc").key for line in earlier] == at_arrival


def test_a_split_then_a_merge_resolve_in_that_order():
    message = "refund failed for merchant m-104 code 7"
    tpl = fingerprint(message, "shop")
    split = Overrides(splits={tpl.key: (1,)}).resolve(tpl, message, "shop")
    assert split.template == "refund failed for merchant «m-104» code <*>" and split.key != tpl.key
    other = fingerprint("refund failed for merchant m-9 code 7", "shop")
    assert Overrides(splits={tpl.key: (1,)}).resolve(other, "refund failed for merchant m-9 code 7", "shop").key \
        != split.key
    both = Overrides(merges={split.key: "f" * 16, "f" * 16: "e" * 16}, splits={tpl.key: (1,)})
    resolved = both.resolve(tpl, message, "shop")
    assert resolved.key == "e" * 16 and len(resolved.steps) == 3
    looped = Overrides(merges={"a": "b", "b": "a"})
    assert looped.merged("a") == ("b", [("a", "b")])   # a stored cycle stops instead of spinning
