"""Settings: the defaults an operator gets, overridable by a TOML file and the environment.

Precedence: built-in defaults < ``lineage.toml`` (or ``--config``/``$LINEAGE_CONFIG``)
< ``LINEAGE_<NAME>`` environment variables (``LINEAGE_TTL_MAX=1800``).

    ttl_default = 900            # a credential's lifetime when none is asked for (s)
    ttl_max = 3600               # the longest lifetime any credential may have (s)
    single_use_ttl_max = 60      # the longest lifetime of a max_uses: 1 credential (s)
    max_depth = 8                # the deepest delegation chain
    invocation_window = 60       # how far an invocation's iat may be from the log's clock (s)
    checkpoint_interval = 1.0    # seconds between checkpoints when there are new leaves
    dpop_nonce_required = false  # require a server DPoP-Nonce in every proof (RFC 9449 §8)
    host = "127.0.0.1"
    port = 8000
    public_url = ""              # e.g. "https://lineage.example.com": the base DPoP htu must name
    client_metadata_loopback = false  # fetch http://127.0.0.1 client ids too (CIMD): development
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .errors import ConfigError

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    ttl_default: int = 900
    ttl_max: int = 3600
    single_use_ttl_max: int = 60
    max_depth: int = 8
    invocation_window: int = 60
    checkpoint_interval: float = 1.0
    dpop_nonce_required: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""  # the service's URL as clients see it; DPoP htu is checked against it
    # OAuth Client ID Metadata Documents are fetched over https only; this also allows
    # http on the loopback (127.0.0.1, localhost), for a client developed on this machine
    client_metadata_loopback: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            floor = 0 if f.name == "max_depth" else 1e-9
            if f.type in ("int", "float") and (isinstance(value, bool) or value < floor):
                raise ConfigError(f"{f.name} must be a positive number, not {value!r}")
        if self.ttl_default > self.ttl_max:
            raise ConfigError("ttl_default may not exceed ttl_max")
        if self.single_use_ttl_max > self.ttl_max:
            raise ConfigError("single_use_ttl_max may not exceed ttl_max")


def _coerce(name: str, kind: str, value: object) -> object:
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "1", "yes")
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)  # type: ignore[arg-type]
        if kind == "float":
            return float(value)  # type: ignore[arg-type]
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: {value!r} is not a valid {kind}") from None


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    path = path or env.get("LINEAGE_CONFIG")
    if path is None and Path("lineage.toml").exists():
        path = "lineage.toml"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        table = data.get("lineage", data)
        # [gateway] is the gateway's own table (lineage.api.gateway.config), not a setting.
        values.update({k: v for k, v in table.items() if k != "gateway"})
    kinds = {f.name: f.type for f in fields(Settings)}
    for name in kinds:
        key = "LINEAGE_" + name.upper()
        if key in env:
            values[name] = env[key]
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    return replace(Settings(), **{k: _coerce(k, kinds[k], v) for k, v in values.items()})
