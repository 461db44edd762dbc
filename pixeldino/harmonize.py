"""Harmonisation of the processing-baseline offset, so that scenes of all years are comparable.

From processing baseline 04.00 (products from 25 January 2022, and the reprocessed Collection-1 archive, baseline
05.00) ESA adds an offset of -1000 to the DN (``BOA_ADD_OFFSET`` in L2A, ``RADIO_ADD_OFFSET`` in L1C):
reflectance = (DN - 1000) / 10000. With ``fetch.harmonize`` (the default) the fetch subtracts it, so 2021 and 2023
scenes are comparable and match the older archive the demo and the paper used; see :func:`harmonization_offset`
for how the baseline is determined (``s2:processing_baseline``, Earth Search's ``earthsearch:boa_offset_applied``,
else the acquisition date). L1C and L2A are treated alike because ESA documents the same offset for both. Valid
pixels whose harmonised value would be <= 0 become 1, so that 0 stays nodata (:func:`harmonize_dn`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np

#: The processing-baseline offset (DN) and the date from which ESA applied it.
BASELINE_OFFSET = 1000
OFFSET_START = dt.datetime(2022, 1, 25, tzinfo=dt.timezone.utc)


def harmonization_offset(scene: Mapping[str, Any], harmonize: bool) -> tuple[int, str]:
    """The DN offset to add to a scene's reflectance bands, and why.

    Args:
        scene: a manifest entry (``processing_baseline``, ``boa_offset_applied``, ``datetime``).
        harmonize: False gives no offset (``fetch.harmonize: false``).

    Returns:
        ``(-1000, reason)`` for processing baseline >= 04.00 data whose offset is still in the DN, else
        ``(0, reason)``. The baseline comes from ``processing_baseline``; when a provider already removed the
        offset (``boa_offset_applied``, Earth Search) nothing is subtracted; without a baseline, scenes acquired
        from 2022-01-25 are taken to carry the offset.
    """
    if not harmonize:
        return 0, "harmonisation disabled (fetch.harmonize: false)"
    if scene.get("boa_offset_applied") is True:
        return 0, "provider already removed the offset (earthsearch:boa_offset_applied)"
    baseline = scene.get("processing_baseline")
    if baseline:
        try:
            value = float(str(baseline))
        except ValueError:
            value = None
        if value is not None:
            if value >= 4.0:
                return -BASELINE_OFFSET, f"processing baseline {baseline} >= 04.00"
            return 0, f"processing baseline {baseline} < 04.00 (no offset)"
    when = scene.get("datetime")
    if when:
        acquired = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        acquired = acquired if acquired.tzinfo else acquired.replace(tzinfo=dt.timezone.utc)
        if acquired >= OFFSET_START:
            return -BASELINE_OFFSET, "baseline unknown; acquired on or after 2022-01-25"
        return 0, "baseline unknown; acquired before 2022-01-25 (no offset)"
    return 0, "baseline and date unknown (no offset)"


def harmonize_dn(block: np.ndarray, offset: int) -> np.ndarray:
    """Add ``offset`` to valid DN (nonzero), keeping 0 as nodata and valid pixels >= 1; returns uint16."""
    if offset == 0:
        return np.clip(block, 0, 65535).astype(np.uint16)
    values = block.astype(np.int32)
    out = np.where(values > 0, np.maximum(values + offset, 1), 0)
    return np.clip(out, 0, 65535).astype(np.uint16)
