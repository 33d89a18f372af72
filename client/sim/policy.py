"""Evaluate a KMS key policy for one request, the way IAM does, for the local KMS endpoint.

Pure: `evaluate(policy, request) -> Decision`. What is covered is what this project's key policies
use, and an operator or element outside that set raises `PolicyError` rather than being guessed
(the endpoint then refuses the call: an evaluator that does not understand a policy fails closed).

- Statements: `Effect` Allow/Deny, `Principal` ("*" or {"AWS": ARN | account | [...]}),
  `Action`/`NotAction` and `Resource` with `*`/`?` wildcards, `Condition`.
- Operators: StringEquals, StringNotEquals, StringEqualsIgnoreCase, StringNotEqualsIgnoreCase,
  StringLike, StringNotLike, Null, Bool; each with the `ForAnyValue:`/`ForAllValues:` set prefixes
  and the `IfExists` suffix.
- Decision: an explicit Deny wins over any Allow; without a matching Allow the answer is deny.
- Within a statement: all operators must hold (AND), within an operator all keys (AND), and a key
  with several policy values matches if any value does (OR) — for negated operators, if none does.
- A negated operator holds when the key is absent from the request (IAM's rule, and the reason the
  project's Deny statements also catch requests that carry no attestation at all).
- `ForAnyValue:` is false for an absent key; `ForAllValues:` is true for an absent key.
- Condition key names are case-insensitive, except the part after `kms:EncryptionContext:`, which
  is compared exactly (an encryption context key differing in case is a different key).
- Principals: an account ("123456789012" or "arn:aws:iam::123456789012:root") matches every
  principal of that account, standing in for the IAM policies the account root delegates to; a
  role ARN matches that role's assumed-role sessions.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ContextValue = str | Sequence[str] | None

ENCRYPTION_CONTEXT_PREFIX = "kms:encryptioncontext:"
STRING_OPERATORS = {
    "stringequals": (False, False, False),  # (negated, ignore_case, wildcards)
    "stringnotequals": (True, False, False),
    "stringequalsignorecase": (False, True, False),
    "stringnotequalsignorecase": (True, True, False),
    "stringlike": (False, False, True),
    "stringnotlike": (True, False, True),
}
SET_PREFIXES = ("foranyvalue:", "forallvalues:")
IF_EXISTS = "ifexists"
ACCOUNT_RE = re.compile(r"^(?:arn:aws[a-z-]*:iam::)?(\d{12})(?::root)?$")
ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/(?:.*/)?([^/]+)$")
ASSUMED_ROLE_RE = re.compile(r"^arn:aws[a-z-]*:sts::(\d{12}):assumed-role/([^/]+)/[^/]+$")
ARN_ACCOUNT_RE = re.compile(r"^arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:(\d{12}):")


class PolicyError(ValueError):
    """The policy uses an element or operator this evaluator does not implement."""


@dataclass(frozen=True)
class Request:
    principal_arn: str
    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    statement: str | None = None  # the Sid (or index) that decided


def evaluate(policy: Mapping[str, Any], request: Request) -> Decision:
    statements = policy.get("Statement")
    if isinstance(statements, Mapping):
        statements = [statements]
    if not isinstance(statements, list):
        raise PolicyError("the policy has no Statement list")
    context = _normalise_context(request.context)
    allowed_by = None
    for index, statement in enumerate(statements):
        name = str(statement.get("Sid") or f"statement #{index}")
        effect = statement.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError(f"{name}: Effect must be Allow or Deny, got {effect!r}")
        if not statement_applies(statement, request, context, name):
            continue
        if effect == "Deny":
            return Decision(False, f"explicitly denied by {name}", name)
        allowed_by = allowed_by or name
    if allowed_by:
        return Decision(True, f"allowed by {allowed_by}", allowed_by)
    return Decision(False, "no statement allows this request (implicit deny)")


def statement_applies(statement: Mapping[str, Any], request: Request,
                      context: Mapping[str, ContextValue], name: str = "statement") -> bool:
    unsupported = set(statement) - {"Sid", "Effect", "Principal", "Action", "NotAction",
                                    "Resource", "Condition"}
    if unsupported:
        raise PolicyError(f"{name}: unsupported policy elements {sorted(unsupported)}")
    if not principal_matches(statement.get("Principal"), request.principal_arn, name):
        return False
    if "Action" in statement:
        if not _any_glob(_as_list(statement["Action"]), request.action, ignore_case=True):
            return False
    elif "NotAction" in statement:
        if _any_glob(_as_list(statement["NotAction"]), request.action, ignore_case=True):
            return False
    else:
        raise PolicyError(f"{name}: a statement needs Action or NotAction")
    if not _any_glob(_as_list(statement.get("Resource", "*")), request.resource,
                     ignore_case=False):
        return False
    return conditions_hold(statement.get("Condition") or {}, context, name)


def principal_matches(principal: Any, caller: str, name: str = "statement") -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        raise PolicyError(f"{name}: Principal must be \"*\" or a map, got {principal!r}")
    for kind, values in principal.items():
        if kind != "AWS":
            continue  # service principals never match a signed-in caller
        for value in _as_list(values):
            if value == "*" or _principal_value_matches(value, caller):
                return True
    return False


def _principal_value_matches(value: str, caller: str) -> bool:
    if value == caller:
        return True
    account = ACCOUNT_RE.match(value)
    if account:
        caller_account = ARN_ACCOUNT_RE.match(caller)
        return caller_account is not None and caller_account.group(1) == account.group(1)
    role = ROLE_RE.match(value)
    session = ASSUMED_ROLE_RE.match(caller)
    return bool(role and session and role.groups() == session.groups())


def conditions_hold(conditions: Mapping[str, Any], context: Mapping[str, ContextValue],
                    name: str = "statement") -> bool:
    context = _normalise_context(context)
    for operator, keys in conditions.items():
        if not isinstance(keys, Mapping):
            raise PolicyError(f"{name}: condition {operator} must map keys to values")
        for key, values in keys.items():
            policy_values = [_policy_string(v, name) for v in _as_list(values)]
            if not condition_holds(operator, policy_values, _lookup(context, key), name):
                return False
    return True


@dataclass(frozen=True)
class Operator:
    """A condition operator taken apart: `ForAnyValue:StringEqualsIfExists` is base
    "stringequals", set_mode "foranyvalue", if_exists True."""

    base: str
    set_mode: str | None
    if_exists: bool


def parse_operator(operator: str) -> Operator:
    lowered = operator.lower()
    set_mode = None
    for prefix in SET_PREFIXES:
        if lowered.startswith(prefix):
            set_mode, lowered = prefix[:-1], lowered[len(prefix):]
    if_exists = lowered.endswith(IF_EXISTS)
    if if_exists:
        lowered = lowered[: -len(IF_EXISTS)]
    return Operator(lowered, set_mode, if_exists)


def condition_holds(operator: str, policy_values: list[str], value: ContextValue,
                    name: str = "statement") -> bool:
    """One `operator: {key: policy_values}` test against the request's value for the key."""
    parsed = parse_operator(operator)
    values = [] if value is None else ([value] if isinstance(value, str) else list(value))
    if parsed.base == "null":
        return null_holds(parsed, policy_values, present=bool(values), name=name)
    negated, ignore_case, wildcards = string_semantics(parsed.base, operator, name)
    matches = [any(_string_match(p, v, ignore_case=ignore_case, wildcards=wildcards)
                   for p in policy_values) for v in values]
    return combine_matches(parsed, matches, negated=negated)


def null_holds(operator: Operator, policy_values: list[str], *, present: bool,
               name: str) -> bool:
    """`Null: {key: "true"}` holds when the key is absent, `"false"` when it is present."""
    if operator.set_mode or operator.if_exists or len(policy_values) != 1:
        raise PolicyError(f"{name}: Null takes one value and no set prefix")
    return (not present) == (policy_values[0].lower() == "true")


def string_semantics(base: str, operator: str, name: str) -> tuple[bool, bool, bool]:
    """(negated, ignore_case, wildcards) of a string-comparing operator (Bool compares the
    strings "true"/"false" without case)."""
    if base == "bool":
        return False, True, False
    if base in STRING_OPERATORS:
        return STRING_OPERATORS[base]
    raise PolicyError(f"{name}: condition operator {operator!r} is not supported by the "
                      "local KMS; supported: StringEquals, StringNotEquals, "
                      "StringEqualsIgnoreCase, StringNotEqualsIgnoreCase, StringLike, "
                      "StringNotLike, Null, Bool, with ForAnyValue:/ForAllValues:/IfExists")


def combine_matches(operator: Operator, matches: list[bool], *, negated: bool) -> bool:
    """The operator's answer from whether each of the request's values matched some policy
    value (no values: the key is absent)."""
    present = bool(matches)
    if operator.set_mode == "foranyvalue":
        return present and any(matched != negated for matched in matches)
    if operator.set_mode == "forallvalues":
        return (not present) or all(matched != negated for matched in matches)
    if not present:
        return negated or operator.if_exists
    return any(matches) != negated


def _string_match(pattern: str, value: str, *, ignore_case: bool, wildcards: bool) -> bool:
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    if wildcards:
        return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))
    return pattern == value


def _any_glob(patterns: list[Any], value: str, *, ignore_case: bool) -> bool:
    for pattern in patterns:
        pattern_s, value_s = str(pattern), value
        if ignore_case:
            pattern_s, value_s = pattern_s.lower(), value_s.lower()
        if fnmatch.fnmatchcase(value_s, pattern_s.replace("[", "[[]")):
            return True
    return False


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _policy_string(value: Any, name: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    raise PolicyError(f"{name}: condition value {value!r} is not a string")


def _canonical_key(key: str) -> str:
    if key.lower().startswith(ENCRYPTION_CONTEXT_PREFIX):
        return ENCRYPTION_CONTEXT_PREFIX + key[len(ENCRYPTION_CONTEXT_PREFIX):]
    return key.lower()


def _normalise_context(context: Mapping[str, ContextValue]) -> dict[str, ContextValue]:
    return {_canonical_key(k): v for k, v in context.items()}


def _lookup(context: Mapping[str, ContextValue], key: str) -> ContextValue:
    return context.get(_canonical_key(key))
