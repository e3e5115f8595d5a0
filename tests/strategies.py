"""Hypothesis strategies the property tests share: JSON values over the whole value space."""

from hypothesis import strategies as st

#: any character, lone surrogates included (json.dumps writes them as \u escapes)
ANY_CHAR = st.characters()
#: integers well past 64 bits, short of the 4300-digit limit of int <-> str
BIG_INT = st.integers(min_value=-10**300, max_value=10**300)
json_scalars = st.one_of(st.none(), st.booleans(), BIG_INT, st.floats(),
                         st.text(ANY_CHAR, max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(ANY_CHAR, max_size=5),
                                                                inner, max_size=3),
    max_leaves=8)
