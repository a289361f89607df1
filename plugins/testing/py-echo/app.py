"""A Python plugin built from wit/ by the stock componentize-py, as a plugin
author would build it (the tests do: tests/guest_languages.rs):
componentize-py -d wit -w job componentize app -o py-echo.wasm

Payload: any JSON. An object whose `mode` is "retry", "invalid-input" or
"fatal" fails so, with its `message` (a retry after `delay_ms`, when
given); anything else is returned unchanged.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types


def request(payload: bytes) -> dict:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class WitWorld(wit_world.WitWorld):
    def run(self, job: types.Job) -> bytes:
        asked = request(job.payload)
        mode, message = asked.get("mode"), asked.get("message", "")
        if mode == "retry":
            raise Err(types.JobError_Retry(types.RetryRequest(message, asked.get("delay_ms"))))
        if mode == "invalid-input":
            raise Err(types.JobError_InvalidInput(message))
        if mode == "fatal":
            raise Err(types.JobError_Fatal(message))
        return job.payload
