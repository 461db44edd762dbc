"""The one band lookup: requested bands to 1-based raster band indexes, by band description."""

from __future__ import annotations

import pytest

from pixeldino.bands import band_indexes
from pixeldino.errors import InputError

FIX = "fetch it again with these bands"


def test_indexes_follow_the_requested_order_and_accept_aliases() -> None:
    descriptions = ("B02", "B03", "B04", "B08")
    assert band_indexes(descriptions, ["B04", "B03", "B02"], path="s.tif", fix_hint=FIX) == [3, 2, 1]
    assert band_indexes(descriptions, ["red", "nir", "B2"], path="s.tif", fix_hint=FIX) == [3, 4, 1]
    # provider asset names in the descriptions count as their canonical band
    assert band_indexes(("blue", "B04_10m", None), ["B04", "B02"], path="s.tif", fix_hint=FIX) == [2, 1]


def test_first_description_wins_and_other_names_match_as_written() -> None:
    assert band_indexes(("B04", "red"), ["B04"], path="s.tif", fix_hint=FIX) == [1]
    assert band_indexes(("B04", " NDVI ", "elevation"), ["NDVI", "elevation"], path="s.tif", fix_hint=FIX) == [2, 3]


def test_missing_band_is_one_line_naming_file_bands_and_fix() -> None:
    with pytest.raises(InputError) as info:
        band_indexes(("B02", "B03", None), ["B02", "B08", "swir16"], path="scenes/a.tif", fix_hint=FIX)
    assert str(info.value) == "scenes/a.tif: lacks band(s) B08, B11 (it has B02, B03); " + FIX
    with pytest.raises(InputError, match=r"a\.tif: lacks band\(s\) B02 \(it has no band descriptions\)"):
        band_indexes((None, None), ["B02"], path="a.tif", fix_hint=FIX)
