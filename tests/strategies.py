"""Hypothesis strategies the property tests share: JSON values over the whole value space, and
the strict ones (no NaN, no infinities) a test can compare for equality after a round trip."""

from hypothesis import strategies as st

#: any character, lone surrogates included (json.dumps writes them as \u escapes)
ANY_CHAR = st.characters()
#: integers well past 64 bits, short of the 4300-digit limit of int <-> str
BIG_INT = st.integers(min_value=-10**300, max_value=10**300)


def json_trees(scalars, *, max_leaves: int = 8):
    """`scalars`, and arrays and objects (any text as keys) nested around them."""
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(ANY_CHAR, max_size=5),
                                                                    inner, max_size=3),
        max_leaves=max_leaves)


json_scalars = st.one_of(st.none(), st.booleans(), BIG_INT, st.floats(),
                         st.text(ANY_CHAR, max_size=8))
#: every value json.dumps writes: NaN and infinities (as Python writes them) included
json_values = json_trees(json_scalars)
#: JSON as RFC 8259 has it (no NaN, no infinities): equal to itself after json.loads(json.dumps())
strict_json = json_trees(st.one_of(st.none(), st.booleans(), BIG_INT,
                                   st.floats(allow_nan=False, allow_infinity=False),
                                   st.text(ANY_CHAR, max_size=8)), max_leaves=12)
