"""The typed config loader: overrides, YAML, unknown keys and wrong types are clear errors."""

from dataclasses import dataclass, field

import pytest

from lpm.config import ConfigError, apply_overrides, load_config, to_dict


@dataclass
class Inner:
    width: int = 4
    widths: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_overrides_and_nesting():
    cfg = apply_overrides(Outer(), ["lr=2e-4", "betas=[0.8, 0.9]", "inner.widths=[3,4,5]", "flag=true"])
    assert cfg.lr == 2e-4 and cfg.betas == (0.8, 0.9) and cfg.inner.widths == (3, 4, 5) and cfg.flag is True
    assert to_dict(cfg)["inner"]["widths"] == [3, 4, 5]


def test_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        apply_overrides(Outer(), ["nope=1"])
    with pytest.raises(ConfigError, match="inner.width"):
        apply_overrides(Outer(), ["inner.width=abc"])
    with pytest.raises(ConfigError, match="expected 2 items"):
        apply_overrides(Outer(), ["betas=[1, 2, 3]"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Outer(), ["lr"])
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.5\ninner: {width: 8}\n")
    cfg = load_config(Outer, yaml_path=y, overrides=["name=z"])
    assert (cfg.lr, cfg.inner.width, cfg.name) == (0.5, 8, "z")
    y.write_text("bogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(Outer, yaml_path=y)
