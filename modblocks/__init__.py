"""modblocks: diffusion pipelines out of plain functions.

Decorate functions with `block`, compose them with ``>>``, branch with `switch`, loop with
`loop`, and run them on a `State` — or bind models once in a `Pipeline`.
"""

from __future__ import annotations

from ._batching import BatchStats as BatchStats
from ._batching import StepBatcher as StepBatcher
from ._block import Block as Block
from ._block import block as block
from ._blocks_loader import LoadedBlocks as LoadedBlocks
from ._blocks_loader import load_blocks as load_blocks
from ._cache import Cache as Cache
from ._cache import CacheStats as CacheStats
from ._cache import touch as touch
from ._components import ComponentInfo as ComponentInfo
from ._components import Components as Components
from ._control import Loop as Loop
from ._control import Switch as Switch
from ._control import loop as loop
from ._control import switch as switch
from ._engine import CancelToken as CancelToken
from ._engine import Hook as Hook
from ._engine import Step as Step
from ._events import Event as Event
from ._events import Report as Report
from ._lazy import Lazy as Lazy
from ._markers import Component as Component
from ._markers import Config as Config
from ._node import Node as Node
from ._node import Sequential as Sequential
from ._offload import DiskOffload as DiskOffload
from ._offload import GroupOffload as GroupOffload
from ._offload import ModelOffload as ModelOffload
from ._offload import Placement as Placement
from ._paths import Path as Path
from ._paths import Segment as Segment
from ._pipeline import Pipeline as Pipeline
from ._progress import progress as progress
from ._specs import NOTHING as NOTHING
from ._specs import InputSpec as InputSpec
from ._specs import OutputSpec as OutputSpec
from ._state import State as State
from .exceptions import BlockError as BlockError
from .exceptions import BlockPicklingError as BlockPicklingError
from .exceptions import BlocksChangedError as BlocksChangedError
from .exceptions import CacheKeyError as CacheKeyError
from .exceptions import CancelledError as CancelledError
from .exceptions import DefaultsWarning as DefaultsWarning
from .exceptions import DefinitionError as DefinitionError
from .exceptions import FrozenStateError as FrozenStateError
from .exceptions import InputTypeError as InputTypeError
from .exceptions import LoadError as LoadError
from .exceptions import MapError as MapError
from .exceptions import MissingInputError as MissingInputError
from .exceptions import ModblocksError as ModblocksError
from .exceptions import OutputError as OutputError
from .exceptions import PathError as PathError
from .exceptions import UnknownInputError as UnknownInputError
from .exceptions import UnknownOutputError as UnknownOutputError
from .exceptions import UnknownValueError as UnknownValueError
from .exceptions import UntrustedCodeError as UntrustedCodeError
from .exceptions import WiringError as WiringError

__version__ = "0.1.0"

__all__ = [
    "NOTHING",
    "BatchStats",
    "Block",
    "BlockError",
    "BlockPicklingError",
    "BlocksChangedError",
    "Cache",
    "CacheKeyError",
    "CacheStats",
    "CancelToken",
    "CancelledError",
    "Component",
    "ComponentInfo",
    "Components",
    "Config",
    "DefaultsWarning",
    "DefinitionError",
    "DiskOffload",
    "Event",
    "FrozenStateError",
    "GroupOffload",
    "Hook",
    "InputSpec",
    "InputTypeError",
    "Lazy",
    "LoadError",
    "LoadedBlocks",
    "Loop",
    "MapError",
    "MissingInputError",
    "ModblocksError",
    "ModelOffload",
    "Node",
    "OutputError",
    "OutputSpec",
    "Path",
    "PathError",
    "Pipeline",
    "Placement",
    "Report",
    "Segment",
    "Sequential",
    "State",
    "Step",
    "StepBatcher",
    "Switch",
    "UnknownInputError",
    "UnknownOutputError",
    "UnknownValueError",
    "UntrustedCodeError",
    "WiringError",
    "__version__",
    "block",
    "load_blocks",
    "loop",
    "progress",
    "switch",
    "touch",
]
