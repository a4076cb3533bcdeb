"""modblocks: diffusion pipelines out of plain functions.

Decorate functions with `block`, compose them with ``>>``, branch with `switch`, loop with
`loop`, and run them on a `State` — or bind models once in a `Pipeline`.
"""

from __future__ import annotations

from ._block import Block as Block
from ._block import block as block
from ._cache import Cache as Cache
from ._cache import CacheStats as CacheStats
from ._cache import touch as touch
from ._control import Loop as Loop
from ._control import Switch as Switch
from ._control import loop as loop
from ._control import switch as switch
from ._events import Event as Event
from ._events import Report as Report
from ._markers import Component as Component
from ._markers import Config as Config
from ._node import Node as Node
from ._pipeline import Pipeline as Pipeline
from ._progress import progress as progress
from ._run import CancelToken as CancelToken
from ._run import Step as Step
from ._sequential import Sequential as Sequential
from ._specs import NOTHING as NOTHING
from ._specs import InputSpec as InputSpec
from ._specs import OutputSpec as OutputSpec
from ._state import State as State
from .exceptions import BlockError as BlockError
from .exceptions import CancelledError as CancelledError
from .exceptions import DefinitionError as DefinitionError
from .exceptions import MapError as MapError
from .exceptions import MissingInputError as MissingInputError
from .exceptions import ModblocksError as ModblocksError
from .exceptions import OutputError as OutputError
from .exceptions import UnknownInputError as UnknownInputError
from .exceptions import WiringError as WiringError

__version__ = "0.1.0"

__all__ = [
    "NOTHING",
    "Block",
    "BlockError",
    "Cache",
    "CacheStats",
    "CancelToken",
    "CancelledError",
    "Component",
    "Config",
    "DefinitionError",
    "Event",
    "InputSpec",
    "Loop",
    "MapError",
    "MissingInputError",
    "ModblocksError",
    "Node",
    "OutputError",
    "OutputSpec",
    "Pipeline",
    "Report",
    "Sequential",
    "State",
    "Step",
    "Switch",
    "UnknownInputError",
    "WiringError",
    "__version__",
    "block",
    "loop",
    "progress",
    "switch",
    "touch",
]
