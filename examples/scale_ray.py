"""Ray Data: `modblocks.ray.map_batches` runs a pipeline on a dataset, one per actor.

The columns named like the pipeline's inputs are its inputs, and the output becomes a
column. Each actor loads the pipeline once. Install with ``pip install "modblocks[ray]"``.
"""

import importlib.util
import warnings

import modblocks as mb
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components


def main() -> None:
    import ray

    import modblocks.ray

    # Ray Data 2.60 warns about its own deprecated settings when it starts.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pipe = mb.Pipeline(text2img, components=tiny_sd_components())
        rows = [
            {"prompt": f"a cat, style {i}", "num_inference_steps": 2, "output_type": "np"}
            for i in range(4)
        ]
        images = modblocks.ray.map_batches(
            ray.data.from_items(rows),
            pipe,
            output="images",
            batch_size=2,  # rows per actor call, stacked into one pipeline call
            concurrency=2,  # actors, each holding one pipeline
        )
        for row in images.take_all():
            print(row["prompt"], row["images"].shape)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    if importlib.util.find_spec("ray") is None:
        print('Ray is not installed; skipped. pip install "modblocks[ray]"')
    else:
        main()
