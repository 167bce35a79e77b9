"""A local AWS KMS (and STS) emulator for tests: moto 5.2.5, patched to match KMS, with fault injection.

Start it with ``python -m tests.support.kms_emulator [--port N]`` or, from tests,
``start_emulator_process()``; steer it with ``EmulatorControl(url)`` or plain HTTP on ``/_emulator/``
(see middleware.py). Importing this package does not import moto.
"""

from .control import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    EmulatorControl,
    EmulatorError,
    EmulatorProcess,
    start_emulator_process,
)

__all__ = [
    "DUMMY_ACCESS_KEY_ID",
    "DUMMY_SECRET_ACCESS_KEY",
    "EmulatorControl",
    "EmulatorError",
    "EmulatorProcess",
    "start_emulator_process",
]
