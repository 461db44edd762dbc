# One 10 m COG and JSON sidecar per scene of the manifest. When the scene has an SCL asset, the fetch also writes
# <scene>_mask.tif (the quality mask) next to it. That file is not a declared output because Snakemake has no
# optional outputs and L1C scenes have no SCL; the sidecar names it ("quality_mask", or null), and it is written
# before the scene and the sidecar, so any job that depends on the scene finds it complete.
# A scene with no valid or no clear pixel is still written (the DAG stays what the manifest promised) but its
# sidecar says "skipped": true; chipping leaves it out and prediction on it yields nodata.
# Downloads hold one unit of the `network` resource: the profiles cap it (`resources: network=8`), so hundreds of
# fetch jobs never hit a provider at once. With fetch.local: true the fetches run on the host Snakemake runs on
# (a login node with internet), never on compute nodes.
rule fetch_scene:
    input:
        manifest=MANIFEST,
    output:
        scene=keep_or_temp(f"{RESULTS}/scenes/{{scene}}.tif", "scenes"),
        sidecar=f"{RESULTS}/scenes/{{scene}}.json",
    params:
        bands=config["bands"],
        # what the scene depends on, so that Snakemake re-fetches when it changes and only then: fetch.local (where
        # jobs run) and fetch.composite (a later target) are left out, and the AOI only matters when clipping
        fetch={k: v for k, v in config["fetch"].items() if k not in ("local", "composite")},
        aoi=config["search"]["aoi"] if config["fetch"]["clip_to_aoi"] else None,
        aux=config["aux"],  # auxiliary layers (DEM derivatives, indices) appended to the scene
    log:
        f"{LOGS}/fetch_scene/{{scene}}.log",
    benchmark:
        f"{BENCH}/fetch_scene/{{scene}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        network=1,
    localrule: config["fetch"]["local"]
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/fetch_scene.py"


# Every scene of the manifest, and nothing else: run it where there is internet (a login node) before the GPU and
# CPU jobs, which then need no network:
#   snakemake fetch_all --cores 4 --use-conda --configfile config/arctic.yaml
rule fetch_all:
    input:
        lambda w: expand(f"{RESULTS}/scenes/{{scene}}.{{ext}}", scene=scene_ids(), ext=("tif", "json")),
    localrule: True


# Per-tile seasonal median of the fetched scenes over clear pixels (optional, fetch.composite: median):
#   snakemake --cores 4 composites
rule composite_tile:
    input:
        # the fetched scenes of this tile, from the checkpoint manifest
        scenes=lambda w: expand(
            f"{RESULTS}/scenes/{{scene}}.tif", scene=[s["id"] for s in manifest_scenes() if s["tile"] == w.tile]
        ),
    output:
        composite=f"{RESULTS}/composites/{{tile}}.tif",
        sidecar=f"{RESULTS}/composites/{{tile}}.json",
    params:
        method=config["fetch"]["composite"],
    log:
        f"{LOGS}/composite_tile/{{tile}}.log",
    benchmark:
        f"{BENCH}/composite_tile/{{tile}}.tsv"
    resources:
        mem_mb=8000,
    conda:
        "../envs/geo.yaml"
    script:
        "../scripts/composite_tile.py"


rule composites:
    input:
        # one composite per tile of the manifest; nothing when fetch.composite is 'none'
        lambda w: (
            []
            if config["fetch"]["composite"] == "none"
            else expand(f"{RESULTS}/composites/{{tile}}.tif", tile=sorted({s["tile"] for s in manifest_scenes()}))
        ),
    localrule: True
