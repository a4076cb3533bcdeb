"""Dask: `pipe.map(..., executor=client.get_executor())` on a (here local) Dask cluster.

The pipeline is scattered to every worker once; each task carries a token and the item's
inputs. Install with ``pip install "modblocks[dask]"``. Blocks and component classes must
be importable on the workers (defined in a module, as `modblocks.diffusion`'s are).
"""

import importlib.util

import torch

import modblocks as mb
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components


def main() -> None:
    import dask
    from distributed import Client, LocalCluster

    pipe = mb.Pipeline(text2img, components=tiny_sd_components())
    items = [
        {
            "prompt": f"a cat, style {i}",
            "generator": torch.Generator().manual_seed(i),
            "num_inference_steps": 2,
        }
        for i in range(4)
    ]
    with (
        # Dask's workers give freed memory back to the OS at once, which slows PyTorch down
        # (about 2x on `benchmarks/scale.py`): let them keep it.
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        images = pipe.map(items, executor=client.get_executor(), batch_size=2)
        print(len(images), "items from", len(client.nthreads()), "Dask workers")


if __name__ == "__main__":
    if importlib.util.find_spec("distributed") is None:
        print('Dask is not installed; skipped. pip install "modblocks[dask]"')
    else:
        main()
