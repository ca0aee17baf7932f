"""``--variants`` items: a loss with optional T, alpha and model; canonical names are their identity."""

from __future__ import annotations

import pytest

from bandistill.errors import UserError
from bandistill.variants import Variant, parse_variants


def test_items_parse_into_canonical_names_and_folders():
    vs = parse_variants("ban, ban+l ,cwtm,dkpp,kd:T=4,kd:alpha=0.9:T=2,ban+l:model=resnet-32")
    assert [v.name for v in vs] == ["ban", "ban+l", "cwtm", "dkpp", "kd:T=4", "kd:T=2:alpha=0.9",
                                    "ban+l:model=resnet-32"]
    assert vs[4] == Variant("kd", temperature=4.0) and vs[4].folder == "kd-T4"
    assert vs[1].folder == "banpl" and len({v.folder for v in vs}) == len(vs)


@pytest.mark.parametrize("text,fragment", [
    ("ban,xyz", "unknown loss 'xyz'"), ("kd:T", "is not T=<number>"), ("kd:T=abc", "is not a number"),
    ("ban:alpha=0.9", "kd only"), ("ban,ban+l,ban", "'ban' twice"), ("kd:T=0", "--temperature must be between"),
    ("", "is empty"), ("kd:T=4:T=2", "each at most once"), ("ban:model=nope", "nope"),
])
def test_bad_items_are_one_line_user_errors(text, fragment):
    with pytest.raises(UserError, match=None) as exc:
        parse_variants(text)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
