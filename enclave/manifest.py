"""The application manifest: what the owner allows the host to start, and with which arguments.

`manifest.json` sits at the root of the application directory and travels inside the sealed
bundle, so the host cannot change it. It is validated when sealing and again after unsealing.
Validation is strict: unknown fields, duplicate keys, wrong types and out-of-range values are
errors, because anything the runner tolerates is something the host may try to exploit.

`Manifest.resolve_arguments` is the one place host-supplied arguments become an argv tail: it is
pure (no file system access) and purely lexical. The caller still has to open inputs without
following links and create output parents (see its docstring).

One module although over 400 lines, because it holds one idea, the manifest's schema: each
dataclass, the strict parser that builds it and the argument checks it defines are read
together when a rule changes, and splitting the parser from the types would leave each half
naming the other's every field.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from enclave.image import interpreter_problem
from enclave.paths import INBOX, OUTBOX, split_area

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1

MAX_MANIFEST_BYTES = 64 * 1024
MAX_ENTRYPOINTS = 16
MAX_ARGS = 32
MAX_COMMAND_ELEMENTS = 64
MAX_COMMAND_ELEMENT_CHARS = 4096
MAX_OUTPUT_BYTES = 1024 * 1024
MAX_TIME_LIMIT_SECONDS = 86400
MAX_CONCURRENT_RUNS = 16
# Host-supplied strings: a path may be longer than one component, a value is capped by its pattern
# but also here, so a permissive owner pattern still cannot take arbitrarily long input.
MAX_PATH_CHARS = 1024
MAX_PATH_COMPONENT_CHARS = 255
MAX_PATH_DEPTH = 32
MAX_VALUE_CHARS = 4096

DEFAULT_VALUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._=:,-]{0,255}$"
DEFAULT_OUTPUT_MAX_BYTES = 65536
DEFAULT_TIME_LIMIT_SECONDS = 300
DEFAULT_CONCURRENT_RUNS = 1

# A service entrypoint's limits (`ServiceSpec`): lower and upper bounds, and defaults.
MAX_SERVICE_CONCURRENT_REQUESTS = 64
MAX_SERVICE_BODY_BYTES = 16 * 1024 * 1024
MAX_SERVICE_REQUEST_TIMEOUT_SECONDS = 3600
MAX_SERVICE_READY_TIMEOUT_SECONDS = 3600
MAX_SERVICE_RESTARTS = 100
RESTART_POLICIES = ("never", "on-failure")
ENTRYPOINT_KINDS = ("run", "service")

# Also what the bundle's encryption context must hold (enclave/bundle_format.py).
APP_ID_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
APP_VERSION_PATTERN = re.compile(r"[0-9A-Za-z.+_-]{1,64}")
_ENTRYPOINT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_ARG_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# One component of a host-supplied exchange path. A conservative allow-list: no leading dot (so
# neither `.`, `..` nor hidden files), no separators, spaces, quotes or control characters.
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=,@-]*")

ArgKind = Literal["input", "output", "value"]
_ARG_KINDS = ("input", "output", "value")


class ManifestError(ValueError):
    """The manifest, or arguments checked against it, are not acceptable. The message says why."""


@dataclass(frozen=True)
class ArgSpec:
    """One positional argument the host may supply to an entrypoint."""

    name: str
    kind: ArgKind
    pattern: str | None = None  # only for kind "value"; None means DEFAULT_VALUE_PATTERN
    optional: bool = False

    @property
    def effective_pattern(self) -> str:
        return self.pattern if self.pattern is not None else DEFAULT_VALUE_PATTERN

    def area_path(self, value: str) -> str:
        """An input's or output's path inside its area, read as push, pull and `run -f` read
        paths: `inbox/x` and `x` are the same input, `outbox/x` and `x` the same output; an
        input in the outbox or an output in the inbox is refused. Lexical only."""
        area = INBOX if self.kind == "input" else OUTBOX
        named, relative = split_area(value, default=area)
        if named != area:
            raise ManifestError(
                f"argument {self.name!r}: {value!r} is in the {named}, but {self.kind} arguments "
                f"are paths in the {area}" + ("; pull the file and push it into the inbox first"
                                              if area == INBOX else "")
            )
        return relative


@dataclass(frozen=True)
class ServiceSpec:
    """What the owner allows the host to send a service, and how the runtime keeps it up."""

    max_concurrent_requests: int = 4
    max_request_bytes: int = 64 * 1024
    max_response_bytes: int = 64 * 1024
    request_timeout_seconds: int = 30
    ready_timeout_seconds: int = 60
    restart: str = "never"  # or "on-failure": restart after an unbidden exit, max_restarts times
    max_restarts: int = 0


@dataclass(frozen=True)
class Entrypoint:
    """A command the owner fixed; the host only fills in `args`, positionally.

    A `service` entrypoint is a long-lived HTTP/1.1 server on the Unix socket named by
    SEALED_SERVICE_SOCKET; it takes no arguments and has a `service` spec instead.
    """

    name: str
    command: tuple[str, ...]
    args: tuple[ArgSpec, ...]
    kind: str = "run"
    service: ServiceSpec | None = None

    @property
    def min_args(self) -> int:
        return sum(1 for spec in self.args if not spec.optional)

    @property
    def max_args(self) -> int:
        return len(self.args)


@dataclass(frozen=True)
class OutputPolicy:
    """What of a run's output the host may read besides the exit code (always visible)."""

    stdout: bool = False
    stderr: bool = False
    max_bytes: int = DEFAULT_OUTPUT_MAX_BYTES


@dataclass(frozen=True)
class Manifest:
    format: int
    app_id: str
    app_version: str
    entrypoints: dict[str, Entrypoint]
    output: OutputPolicy
    time_limit_seconds: int
    concurrent_runs: int

    def entrypoint(self, name: str) -> Entrypoint:
        try:
            return self.entrypoints[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self.entrypoints))
            raise ManifestError(
                f"unknown entrypoint {name!r}: this bundle declares {known}"
            ) from None

    def resolve_arguments(
        self,
        entrypoint: str,
        host_args: list[str],
        inbox: str | Path,
        outbox: str | Path,
    ) -> list[str]:
        """Check the host's arguments against the entrypoint and return the argv tail.

        The result is only the arguments (append it to `entrypoint(name).command`). `input` and
        `output` arguments become absolute paths under `inbox` / `outbox`; `value` arguments are
        returned unchanged once they fully match their pattern.

        Pure and lexical: nothing is read or created. The caller must still make sure an input
        is an existing regular file reached without following links (e.g. open with
        O_NOFOLLOW on every component, or `os.path.realpath` staying under the inbox), and
        create an output's parent directory.
        """
        spec = self.entrypoint(entrypoint)
        if not isinstance(host_args, list | tuple) or not all(
            isinstance(a, str) for a in host_args
        ):
            raise ManifestError("arguments must be a list of strings")
        count = len(host_args)
        if not spec.min_args <= count <= spec.max_args:
            wanted = (
                str(spec.max_args)
                if spec.min_args == spec.max_args
                else f"{spec.min_args} to {spec.max_args}"
            )
            names = " ".join(f"[{a.name}]" if a.optional else f"<{a.name}>" for a in spec.args)
            raise ManifestError(
                f"entrypoint {entrypoint!r} takes {wanted} argument(s) ({names}), got {count}"
            )
        inbox_root = _absolute_root(inbox, "inbox")
        outbox_root = _absolute_root(outbox, "outbox")
        resolved = []
        for arg_spec, value in zip(spec.args, host_args, strict=False):
            if arg_spec.kind == "input":
                value = arg_spec.area_path(value)
                resolved.append(_join_confined(inbox_root, value, arg_spec.name))
            elif arg_spec.kind == "output":
                value = arg_spec.area_path(value)
                resolved.append(_join_confined(outbox_root, value, arg_spec.name))
            else:
                resolved.append(_check_value(arg_spec, value))
        return resolved


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file (or `<dir>/manifest.json` if given a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        with path.open("rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(
            f"no manifest at {path}: write a {MANIFEST_NAME} at the root of the application "
            "directory (see docs/ARCHITECTURE.md, 'Manifest')"
        ) from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    return parse_manifest(data)


def parse_manifest(data: bytes) -> Manifest:
    """Validate manifest JSON bytes and return the `Manifest`. Raises `ManifestError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ManifestError("manifest must be given as bytes")
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError("manifest is not valid UTF-8") from None
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"manifest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return _manifest_from(raw)


# --- validation -------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ManifestError(f"duplicate key {key!r} in manifest")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ManifestError(f"{name} is not allowed in a manifest")


def _fields(
    obj: Any, where: str, required: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where} must be a JSON object")
    unknown = set(obj) - required - optional
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ManifestError(
            f"unknown field(s) {', '.join(sorted(unknown))} in {where} (allowed: {allowed})"
        )
    missing = required - set(obj)
    if missing:
        raise ManifestError(f"missing field(s) {', '.join(sorted(missing))} in {where}")
    return obj


def _int(value: Any, where: str, low: int, high: int) -> int:
    # bool is an int subclass; `true` is not a number of seconds.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{where} must be an integer")
    if not low <= value <= high:
        raise ManifestError(f"{where} must be between {low} and {high}, got {value}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestError(f"{where} must be true or false")
    return value


def _str(value: Any, where: str, pattern: re.Pattern[str], expected: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ManifestError(f"{where} must be {expected}, got {value!r}")
    return value


def _manifest_from(raw: Any) -> Manifest:
    obj = _fields(
        raw,
        "manifest",
        {"format", "app_id", "app_version", "entrypoints"},
        {"output", "time_limit_seconds", "concurrent_runs"},
    )
    fmt = obj["format"]
    if fmt != FORMAT_VERSION or isinstance(fmt, bool):
        raise ManifestError(f"manifest format {fmt!r} is not supported: expected {FORMAT_VERSION}")
    app_id = _str(
        obj["app_id"], "app_id", APP_ID_PATTERN, "1-63 lowercase letters, digits and inner hyphens"
    )
    app_version = _str(
        obj["app_version"],
        "app_version",
        APP_VERSION_PATTERN,
        "1-64 characters from [0-9A-Za-z.+_-]",
    )
    entrypoints_raw = obj["entrypoints"]
    if not isinstance(entrypoints_raw, dict) or not entrypoints_raw:
        raise ManifestError("entrypoints must be a non-empty JSON object")
    if len(entrypoints_raw) > MAX_ENTRYPOINTS:
        raise ManifestError(f"at most {MAX_ENTRYPOINTS} entrypoints are allowed")
    entrypoints = {name: _entrypoint_from(name, value) for name, value in entrypoints_raw.items()}
    return Manifest(
        format=FORMAT_VERSION,
        app_id=app_id,
        app_version=app_version,
        entrypoints=entrypoints,
        output=_output_from(obj.get("output", {})),
        time_limit_seconds=_int(
            obj.get("time_limit_seconds", DEFAULT_TIME_LIMIT_SECONDS),
            "time_limit_seconds",
            1,
            MAX_TIME_LIMIT_SECONDS,
        ),
        concurrent_runs=_int(
            obj.get("concurrent_runs", DEFAULT_CONCURRENT_RUNS),
            "concurrent_runs",
            1,
            MAX_CONCURRENT_RUNS,
        ),
    )


def _output_from(raw: Any) -> OutputPolicy:
    obj = _fields(raw, "output", set(), {"stdout", "stderr", "max_bytes"})
    return OutputPolicy(
        stdout=_bool(obj.get("stdout", False), "output.stdout"),
        stderr=_bool(obj.get("stderr", False), "output.stderr"),
        max_bytes=_int(
            obj.get("max_bytes", DEFAULT_OUTPUT_MAX_BYTES), "output.max_bytes", 0, MAX_OUTPUT_BYTES
        ),
    )


def _entrypoint_from(name: str, raw: Any) -> Entrypoint:
    where = f"entrypoints.{name}"
    _str(name, "entrypoint name", _ENTRYPOINT_NAME, "lowercase [a-z][a-z0-9_-]{0,62}")
    obj = _fields(raw, where, {"command"}, {"args", "kind", "service"})
    kind = obj.get("kind", "run")
    if kind not in ENTRYPOINT_KINDS:
        raise ManifestError(f"{where}.kind must be one of {', '.join(ENTRYPOINT_KINDS)}, "
                            f"got {kind!r}")
    command = _command_from(obj["command"], where)
    args = _args_from(obj.get("args", []), where)
    service = None
    if kind == "service":
        if args:
            raise ManifestError(f"{where}: a service takes no arguments; it reads requests")
        service = _service_from(obj.get("service", {}), f"{where}.service")
    elif "service" in obj:
        raise ManifestError(f"{where}.service is only allowed with \"kind\": \"service\"")
    return Entrypoint(name=name, command=command, args=args, kind=kind, service=service)


def _command_from(command: Any, where: str) -> tuple[str, ...]:
    if not isinstance(command, list) or not command:
        raise ManifestError(f"{where}.command must be a non-empty list of strings")
    if len(command) > MAX_COMMAND_ELEMENTS:
        raise ManifestError(f"{where}.command has more than {MAX_COMMAND_ELEMENTS} elements")
    for i, element in enumerate(command):
        if (
            not isinstance(element, str)
            or not element
            or "\0" in element
            or len(element) > MAX_COMMAND_ELEMENT_CHARS
        ):
            raise ManifestError(
                f"{where}.command[{i}] must be a non-empty string without NUL, "
                f"at most {MAX_COMMAND_ELEMENT_CHARS} characters"
            )
    _check_program(command[0], f"{where}.command[0]")
    return tuple(command)


def _args_from(args_raw: Any, where: str) -> tuple[ArgSpec, ...]:
    if not isinstance(args_raw, list):
        raise ManifestError(f"{where}.args must be a list")
    if len(args_raw) > MAX_ARGS:
        raise ManifestError(f"{where}.args has more than {MAX_ARGS} entries")
    args = tuple(_arg_from(f"{where}.args[{i}]", a) for i, a in enumerate(args_raw))
    seen: set[str] = set()
    optional_seen = False
    for spec in args:
        if spec.name in seen:
            raise ManifestError(f"{where}: argument name {spec.name!r} is declared twice")
        seen.add(spec.name)
        # Arguments are positional: a required one after an optional one could never be told apart.
        if optional_seen and not spec.optional:
            raise ManifestError(
                f"{where}: required argument {spec.name!r} follows an optional one; "
                "put optional arguments last"
            )
        optional_seen = optional_seen or spec.optional
    return args


def _service_from(raw: Any, where: str) -> ServiceSpec:
    fields = {"max_concurrent_requests", "max_request_bytes", "max_response_bytes",
              "request_timeout_seconds", "ready_timeout_seconds", "restart", "max_restarts"}
    obj = _fields(raw, where, set(), fields)
    default = ServiceSpec()
    restart = obj.get("restart", default.restart)
    if restart not in RESTART_POLICIES:
        raise ManifestError(f"{where}.restart must be one of {', '.join(RESTART_POLICIES)}, "
                            f"got {restart!r}")
    max_restarts = _int(obj.get("max_restarts", default.max_restarts), f"{where}.max_restarts",
                        0, MAX_SERVICE_RESTARTS)
    if restart == "never" and max_restarts:
        raise ManifestError(f"{where}.max_restarts needs \"restart\": \"on-failure\"")
    return ServiceSpec(
        max_concurrent_requests=_int(
            obj.get("max_concurrent_requests", default.max_concurrent_requests),
            f"{where}.max_concurrent_requests", 1, MAX_SERVICE_CONCURRENT_REQUESTS),
        max_request_bytes=_int(obj.get("max_request_bytes", default.max_request_bytes),
                               f"{where}.max_request_bytes", 0, MAX_SERVICE_BODY_BYTES),
        max_response_bytes=_int(obj.get("max_response_bytes", default.max_response_bytes),
                                f"{where}.max_response_bytes", 0, MAX_SERVICE_BODY_BYTES),
        request_timeout_seconds=_int(
            obj.get("request_timeout_seconds", default.request_timeout_seconds),
            f"{where}.request_timeout_seconds", 1, MAX_SERVICE_REQUEST_TIMEOUT_SECONDS),
        ready_timeout_seconds=_int(
            obj.get("ready_timeout_seconds", default.ready_timeout_seconds),
            f"{where}.ready_timeout_seconds", 1, MAX_SERVICE_READY_TIMEOUT_SECONDS),
        restart=restart,
        max_restarts=max_restarts,
    )


def _check_program(program: str, where: str) -> None:
    # One of the image's interpreters: the app directory is on a noexec file system, and an
    # absolute path or a path would let the bundle point the runner anywhere (enclave/image.py).
    problem = interpreter_problem(program)
    if problem:
        raise ManifestError(f"{where}: {problem}")


def _arg_from(where: str, raw: Any) -> ArgSpec:
    obj = _fields(raw, where, {"name", "kind"}, {"pattern", "optional"})
    name = _str(obj["name"], f"{where}.name", _ARG_NAME, "lowercase [a-z][a-z0-9_]{0,62}")
    kind = obj["kind"]
    if kind not in _ARG_KINDS:
        raise ManifestError(f"{where}.kind must be one of {', '.join(_ARG_KINDS)}, got {kind!r}")
    pattern = obj.get("pattern")
    if pattern is not None:
        if kind != "value":
            raise ManifestError(f"{where}.pattern is only allowed for kind 'value'")
        if not isinstance(pattern, str) or not pattern:
            raise ManifestError(f"{where}.pattern must be a non-empty string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ManifestError(
                f"{where}.pattern is not a valid regular expression: {exc}"
            ) from None
    optional = _bool(obj.get("optional", False), f"{where}.optional")
    return ArgSpec(name=name, kind=kind, pattern=pattern, optional=optional)


# --- host arguments ---------------------------------------------------------------------------


def _absolute_root(root: str | Path, label: str) -> str:
    text = str(root)
    if not text.startswith("/") or "\0" in text:
        raise ManifestError(f"{label} must be an absolute path")
    return posixpath.normpath(text)


def _join_confined(root: str, value: str, name: str) -> str:
    _check_path_string(value, name)
    parts = value.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise ManifestError(f"argument {name!r}: path deeper than {MAX_PATH_DEPTH} levels")
    for part in parts:
        _check_path_component(part, value, name)
    joined = posixpath.join(root, *parts)
    # Belt and braces: the component checks above already make escaping impossible.
    if posixpath.commonpath([root, joined]) != root or joined == root:
        raise ManifestError(f"argument {name!r}: path {value!r} escapes the exchange area")
    return joined


def _check_path_string(value: str, name: str) -> None:
    """The rules on a path argument as a whole: present, no NUL, bounded, relative, no option."""
    if not value:
        raise ManifestError(f"argument {name!r}: an empty path is not allowed")
    if "\0" in value:
        raise ManifestError(f"argument {name!r}: NUL byte in path")
    if len(value) > MAX_PATH_CHARS:
        raise ManifestError(f"argument {name!r}: path longer than {MAX_PATH_CHARS} characters")
    if value.startswith("/"):
        raise ManifestError(
            f"argument {name!r}: absolute path {value!r} not allowed; give a path relative to "
            "the exchange area"
        )
    if value.startswith("-"):
        raise ManifestError(f"argument {name!r}: a path may not start with '-'")


def _check_path_component(part: str, value: str, name: str) -> None:
    if part in ("", ".", ".."):
        raise ManifestError(
            f"argument {name!r}: path {value!r} has an empty, '.' or '..' component"
        )
    if len(part) > MAX_PATH_COMPONENT_CHARS or not _PATH_COMPONENT.fullmatch(part):
        raise ManifestError(
            f"argument {name!r}: path component {part!r} must match "
            f"{_PATH_COMPONENT.pattern} (at most {MAX_PATH_COMPONENT_CHARS} characters)"
        )


def _check_value(spec: ArgSpec, value: str) -> str:
    if "\0" in value:
        raise ManifestError(f"argument {spec.name!r}: NUL byte in value")
    if len(value) > MAX_VALUE_CHARS:
        raise ManifestError(
            f"argument {spec.name!r}: value longer than {MAX_VALUE_CHARS} characters"
        )
    # Never an option, whatever the owner's pattern says: the command's own parser must not see
    # host-chosen flags.
    if value.startswith("-"):
        raise ManifestError(f"argument {spec.name!r}: a value may not start with '-'")
    if not re.fullmatch(spec.effective_pattern, value):
        raise ManifestError(
            f"argument {spec.name!r}: {value!r} does not match {spec.effective_pattern}"
        )
    return value
