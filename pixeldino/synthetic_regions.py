"""How each region of the synthetic Arctic benchmark looks (:mod:`pixeldino.synthetic`): :class:`RegionStyle`.

Each region has its own look: vegetation colour and vigour, texture scale, relief and sun azimuth, illumination gain
and haze, lakes, snow patches, bare non-RTS patches (frost boils, gravel: the hard negatives), its own slump
appearance (soil colour, contrast against the tundra, i.e. revegetation, headwall strength, slump density) and its
own terrain (relief, valleys, slump depth; :mod:`pixeldino.synthetic_terrain`).

The two held-out regions (Herschel, Lena; as in the PixelDINO paper) differ from the four labelled ones in
illumination, vegetation colour, texture scale and slump appearance, so a model trained on the labelled regions
meets a genuine domain shift there.
"""

from __future__ import annotations

from dataclasses import dataclass

LABELLED_REGIONS: tuple[str, ...] = ("Banks_Island", "Horton", "Tuktoyaktuk", "Kolguev")
HELD_OUT_REGIONS: tuple[str, ...] = ("Herschel", "Lena")


@dataclass(frozen=True)
class RegionStyle:
    """How a region looks. Spectral factors multiply the generic spectra band by band.

    Attributes:
        name: region name (as in the ``region`` field of Nitze et al. 2021).
        veg_tint: per-band factor on the tundra spectra (vegetation colour and vigour).
        wet_share: mean share of wet (sedge) tundra against dry (shrub) tundra.
        texture_sigma: spatial scale of the land-cover texture, in pixels.
        texture_amp: relative amplitude of the fine texture.
        relief_sigma: spatial scale of the terrain, in pixels; relief_amp: hillshade strength.
        sun_azimuth: azimuth of the sun in degrees (shading of relief and headwalls).
        gain: overall illumination factor; haze: additive path radiance per band (DN).
        lake_fraction: share of the scene under lakes; lake_sigma: their spatial scale (pixels).
        snow_fraction: share under late-lying snow patches.
        bare_fraction: share under bare non-RTS patches (frost boils, gravel bars): the hard negatives.
        rts_per_km2: slump density.
        rts_tint: per-band factor on the bare-soil spectrum of slump floors.
        rts_contrast: how far a slump floor departs from the tundra (1 = fully bare, lower = revegetated).
        rts_texture: relative amplitude of texture and mud-flow streaks inside slumps.
        headwall: strength of the headwall shading (0 = none).
        noise: sensor noise, DN standard deviation.
        band_gain: per-band factor on the whole scene: sensor calibration and atmospheric transmittance, which
            change bands unequally (a single gain cannot imitate it).
        phenology: greenness of the season (1 = peak summer; lower = early or late season: redder in B04, less
            red-edge and NIR rise).
        water_tint: per-band factor on the water spectrum (turbid, sediment-laden water is brighter in the visible).
        dem_relief_m: metres of elevation per unit of the relief field (in pixels) whose hillshade lights the image.
        valleys_per_km2: incised valleys (steep-sided, the terrain hard negatives) per km².
        valley_depth_m: mean depth of the valleys.
        slump_depth_m: mean depth of a slump floor below its surroundings at the headwall.
        dem_slump_share: share of the slumps carved into the DEM (a DEM predates the image; new slumps are not in it).
        dem_noise_m: standard deviation of the DEM's noise, at its 30 m pixels.
    """

    name: str
    veg_tint: tuple[float, ...] = (1.0,) * 7
    wet_share: float = 0.5
    texture_sigma: float = 6.0
    texture_amp: float = 0.08
    relief_sigma: float = 20.0
    relief_amp: float = 0.15
    sun_azimuth: float = 160.0
    gain: float = 1.0
    haze: tuple[float, ...] = (0.0,) * 7
    lake_fraction: float = 0.05
    lake_sigma: float = 10.0
    snow_fraction: float = 0.0
    bare_fraction: float = 0.01
    rts_per_km2: float = 0.6
    rts_tint: tuple[float, ...] = (1.0,) * 7
    rts_contrast: float = 0.9
    rts_texture: float = 0.12
    headwall: float = 0.35
    noise: float = 25.0
    band_gain: tuple[float, ...] = (1.0,) * 7
    phenology: float = 1.0
    water_tint: tuple[float, ...] = (1.0,) * 7
    dem_relief_m: float = 1.5
    valleys_per_km2: float = 0.5
    valley_depth_m: float = 12.0
    slump_depth_m: float = 5.0
    dem_slump_share: float = 0.75
    dem_noise_m: float = 1.0


REGIONS: dict[str, RegionStyle] = {
    # --- labelled (training) regions ----------------------------------------------------------------------
    "Banks_Island": RegionStyle(
        "Banks_Island",
        veg_tint=(1.12, 1.1, 1.15, 1.05, 0.85, 0.8, 0.78),
        wet_share=0.3,
        texture_sigma=8.0,
        texture_amp=0.07,
        relief_amp=0.2,
        sun_azimuth=170,
        gain=1.05,
        lake_fraction=0.03,
        snow_fraction=0.01,
        bare_fraction=0.02,
        rts_per_km2=0.7,
        rts_tint=(1.05, 1.05, 1.05, 1.0, 1.0, 1.0, 1.0),
        rts_contrast=0.95,
        band_gain=(1.01, 1.0, 1.0, 1.0, 0.99, 0.99, 0.98),
        phenology=0.95,
        dem_relief_m=1.6,
        slump_depth_m=4.0,
    ),
    "Horton": RegionStyle(
        "Horton",
        veg_tint=(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        wet_share=0.45,
        texture_sigma=6.0,
        relief_amp=0.18,
        sun_azimuth=150,
        gain=1.0,
        lake_fraction=0.06,
        bare_fraction=0.015,
        rts_per_km2=0.8,
        rts_contrast=0.9,
        water_tint=(1.1, 1.1, 1.15, 1.1, 1.0, 1.0, 1.0),
        valleys_per_km2=0.8,
        valley_depth_m=15.0,
    ),
    "Tuktoyaktuk": RegionStyle(
        "Tuktoyaktuk",
        veg_tint=(0.95, 0.98, 0.92, 1.0, 1.08, 1.1, 1.1),
        wet_share=0.65,
        texture_sigma=5.0,
        relief_amp=0.1,
        sun_azimuth=185,
        gain=0.97,
        lake_fraction=0.16,
        lake_sigma=8.0,
        bare_fraction=0.01,
        rts_per_km2=1.2,
        rts_tint=(1.0, 1.02, 1.05, 1.05, 1.0, 1.0, 1.0),
        rts_contrast=0.85,
        band_gain=(0.99, 1.0, 1.0, 1.01, 1.01, 1.0, 1.0),
        phenology=1.0,
        water_tint=(1.2, 1.25, 1.3, 1.2, 1.0, 1.0, 1.0),
        dem_relief_m=0.8,
        valleys_per_km2=0.3,
        valley_depth_m=8.0,
        slump_depth_m=3.5,
    ),
    "Kolguev": RegionStyle(
        "Kolguev",
        veg_tint=(1.05, 1.05, 1.08, 1.05, 0.95, 0.92, 0.92),
        wet_share=0.4,
        texture_sigma=7.0,
        relief_amp=0.16,
        sun_azimuth=140,
        gain=1.02,
        haze=(40, 25, 10, 0, 0, 0, 0),
        lake_fraction=0.04,
        bare_fraction=0.03,
        rts_per_km2=0.6,
        rts_tint=(1.1, 1.08, 1.02, 1.0, 0.98, 0.98, 0.98),
        rts_contrast=0.95,
        band_gain=(1.02, 1.01, 1.0, 1.0, 1.0, 0.99, 0.99),
        phenology=0.9,
        dem_relief_m=1.2,
    ),
    # --- held-out (target) regions: other illumination, vegetation, texture and slump appearance ------------
    "Herschel": RegionStyle(
        # lush coastal tundra under a low, dim sun from the east; slumps partly revegetated and greener
        "Herschel",
        veg_tint=(0.85, 0.95, 0.8, 0.95, 1.2, 1.25, 1.28),
        wet_share=0.55,
        texture_sigma=3.5,
        texture_amp=0.12,
        relief_amp=0.3,
        sun_azimuth=95,
        gain=0.78,
        haze=(150, 100, 60, 30, 10, 0, 0),
        lake_fraction=0.03,
        snow_fraction=0.04,
        bare_fraction=0.02,
        rts_per_km2=1.0,
        rts_tint=(0.9, 1.0, 0.95, 1.05, 1.15, 1.2, 1.2),
        rts_contrast=0.7,
        rts_texture=0.18,
        headwall=0.5,
        # another sensor/atmosphere: visible bands darker, NIR brighter; turbid coastal lagoons
        band_gain=(0.95, 0.96, 0.98, 1.0, 1.02, 1.04, 1.05),
        phenology=1.0,
        water_tint=(1.4, 1.5, 1.7, 1.6, 1.3, 1.2, 1.1),
        # steep coastal terrain: high headwalls, deep gullies
        dem_relief_m=2.2,
        valleys_per_km2=0.7,
        valley_depth_m=18.0,
        slump_depth_m=8.0,
    ),
    "Lena": RegionStyle(
        # brown, fine-grained polygonal tundra with many lakes, hazy bright sun; darker, browner slump floors
        "Lena",
        veg_tint=(1.2, 1.12, 1.25, 1.1, 0.9, 0.85, 0.82),
        wet_share=0.35,
        texture_sigma=2.5,
        texture_amp=0.14,
        relief_amp=0.12,
        sun_azimuth=210,
        gain=1.2,
        haze=(250, 180, 120, 60, 30, 20, 10),
        lake_fraction=0.2,
        lake_sigma=6.0,
        snow_fraction=0.0,
        bare_fraction=0.04,
        rts_per_km2=1.0,
        rts_tint=(0.9, 0.88, 0.95, 0.95, 0.92, 0.9, 0.9),
        rts_contrast=0.8,
        rts_texture=0.16,
        headwall=0.3,
        # late season (senescent tundra), the opposite band tilt, dark clear thermokarst lakes
        band_gain=(1.05, 1.04, 1.02, 1.0, 0.98, 0.96, 0.95),
        phenology=0.85,
        water_tint=(0.8, 0.8, 0.75, 0.8, 0.9, 0.9, 0.9),
        # ice-rich lowland: flat, shallow valleys, slumps in low bluffs
        dem_relief_m=0.7,
        valleys_per_km2=0.4,
        valley_depth_m=7.0,
        slump_depth_m=4.0,
    ),
}
