"""ServeConfig: one validated settings object; an invalid value names the command-line option to fix."""

from __future__ import annotations

import pytest

from edgeft.core.errors import EdgeftError
from edgeft.serve.config import HttpOptions, ServeConfig


def test_defaults_and_nested_groups():
    config = ServeConfig.build(model={"batch_size": 4}, http={"max_body_mb": 1.5}, status_every_s=0)
    assert config.model.batch_size == 4 and config.model.backend == "auto" and config.status_every_s == 0
    assert config.http.max_body_bytes == int(1.5 * 2**20) and not config.parity.enabled
    assert ServeConfig.build(parity={"sample": 0.01}).parity.enabled


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"topk": 0}}, "--topk: input should be greater than or equal to 1 (got 0)"),
        ({"parity": {"sample": 1.5}}, "--parity-sample: input should be less than or equal to 1 (got 1.5)"),
        ({"parity": {"alert_below": -1}}, "--parity-alert"),
        ({"stream": {"max_frames": 0}}, "--max-frames"),
        ({"http": {"max_queue": 0}}, "--max-queue"),
        ({"status_every_s": -1}, "--status-every"),
        ({"model": {"batchsize": 8}}, "batchsize: extra inputs are not permitted"),
    ],
)
def test_invalid_values_name_the_option(values, message):
    with pytest.raises(EdgeftError) as err:
        ServeConfig.build(**values)
    assert message in str(err.value) and err.value.fix


def test_settings_are_frozen():
    with pytest.raises(ValueError):
        HttpOptions().max_queue = 3
