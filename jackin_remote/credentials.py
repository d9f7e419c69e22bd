"""Credential sources: where a secret's value comes from, named, never the value itself.

    env:VAR            a variable of this laptop's environment (a bare VAR means the same)
    file:PATH          a file on this laptop (one trailing newline dropped)
    command:ARGV       a program's standard output (split like a shell line, run without one)
    op://VAULT/ITEM/F  the 1Password CLI: `op read op://VAULT/ITEM/F`

Sources are resolved on the laptop at launch, never by `explain` (a command or `op` may prompt,
cost or log), and the values travel only inside the RPC to the host agent. A failure names the
source and what to do, never a value.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jackin_remote.errors import UsageError

MAX_VALUE_BYTES = 64 * 1024
COMMAND_TIMEOUT = 60.0  # a source that prompts or hangs fails, named, instead of holding launch
KINDS = ("env", "file", "command", "op")


@dataclass(frozen=True)
class Source:
    kind: str  # env | file | command | op
    ref: str  # the variable, path, command line or op:// reference

    def __str__(self) -> str:
        return self.ref if self.kind == "op" else f"{self.kind}:{self.ref}"

    @property
    def described(self) -> str:
        return {
            "env": f"laptop environment variable {self.ref}",
            "file": f"laptop file {self.ref}",
            "command": f"the output of `{self.ref}` on the laptop",
            "op": f"1Password ({self.ref}, read with `op read`)",
        }[self.kind]


def parse_source(text: str, flag: str) -> Source:
    """A source from its text; UsageError naming `flag` when it is not one."""
    if text.startswith("op://"):
        parts = text[len("op://") :].split("/")
        if len(parts) < 3 or not all(parts) or any(c.isspace() for c in text):
            raise UsageError(f"{flag}: {text!r} is not an op://VAULT/ITEM/FIELD reference")
        return Source("op", text)
    kind, sep, ref = text.partition(":")
    if not sep:
        kind, ref = "env", text
    if kind not in ("env", "file", "command") or not ref:
        raise UsageError(
            f"{flag}: {text!r} is not a credential source",
            hint="env:VAR, file:PATH, command:PROGRAM ARGS or op://VAULT/ITEM/FIELD",
        )
    if kind == "env" and not (ref.replace("_", "a").isalnum() and not ref[0].isdigit()):
        raise UsageError(f"{flag}: {ref!r} is not an environment variable name")
    if kind == "command":
        try:
            if not shlex.split(ref):
                raise ValueError("empty")
        except ValueError as exc:
            raise UsageError(f"{flag}: command:{ref!r} cannot be split into a program and its "
                             f"arguments ({exc})") from None  # fmt: skip
    return Source(kind, ref)


def resolve(source: Source, flag: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value, read now. None when an env source is unset (the contract then says so); any
    other failure is a UsageError naming the source."""
    environ = os.environ if environ is None else environ
    if source.kind == "env":
        return environ.get(source.ref) or None
    if source.kind == "file":
        return _checked(_read_file(Path(source.ref).expanduser(), flag), source, flag)
    argv = (
        ["op", "read", "--no-newline", source.ref]
        if source.kind == "op"
        else shlex.split(source.ref)
    )
    return _checked(_run(argv, source, flag, environ), source, flag)


def _read_file(path: Path, flag: str) -> str:
    try:
        data = path.read_bytes()[: MAX_VALUE_BYTES + 1]
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8", errors="strict").removesuffix("\n")
    except UnicodeDecodeError:
        raise UsageError(f"{flag}: {path} is not UTF-8 text") from None


def _run(argv: list[str], source: Source, flag: str, environ: Mapping[str, str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=dict(environ))  # fmt: skip
    except FileNotFoundError:
        hint = "install the 1Password CLI (`op`)" if source.kind == "op" else None
        raise UsageError(f"{flag}: {argv[0]} not found (source {source})", hint=hint) from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"{flag}: {source} gave no answer within {COMMAND_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        # Its stderr is the program's own message: shown cut, as a reason (never its stdout).
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        reason = f": {said[0][:200]}" if said else ""
        raise UsageError(f"{flag}: {source} failed (exit {done.returncode}){reason}")
    try:
        return done.stdout.decode("utf-8", errors="strict").removesuffix("\n")
    except UnicodeDecodeError:
        raise UsageError(f"{flag}: {source} printed something that is not UTF-8 text") from None


def _checked(value: str, source: Source, flag: str) -> str:
    if not value:
        raise UsageError(f"{flag}: {source} gave an empty value")
    if len(value.encode()) > MAX_VALUE_BYTES or "\0" in value:
        raise UsageError(f"{flag}: {source} gave a value over {MAX_VALUE_BYTES} bytes or with NUL")
    return value
