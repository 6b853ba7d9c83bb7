"""The front listener's local rate limits, and the stricter tiers an operator switches on.

Each tier is one local_ratelimit filter: a global token bucket, plus one bucket per distinct
``x-client-id`` (created on first use). Limits count images: a call takes as many tokens as
it declares in ``x-detect-images`` (DetectBatch, DetectStream; absent: one), and the proxy
refuses a call carrying more images than it declared. Token buckets are fixed when Envoy starts, so
run-time changes select among pre-rendered tiers through runtime keys instead:
``POST /runtime_modify?detect.ratelimit.lockdown=100`` turns the lockdown tier on.
"""

from __future__ import annotations

from typing import Any, Final

from detect_envoy.settings import StackConfig
from detect_envoy.typed import extension
from detect_proxy.contract import DECLARED_IMAGES_HEADER

# Stricter tiers, as a fraction of the configured limits; off (runtime key = 0) by default.
TIERS: Final[dict[str, float]] = {"reduced": 0.25, "lockdown": 0.05}
STANDARD: Final = "standard"  # the configured limits, on by default
RUNTIME_ENFORCED: Final = "detect.ratelimit.enforced"


def tier_key(tier: str) -> str:
    """The runtime key that turns a tier on (100) or off (0)."""
    return f"detect.ratelimit.{tier}"


def _bucket(rps: int, burst: int) -> dict[str, Any]:
    return {"max_tokens": max(burst, 1), "tokens_per_fill": max(rps, 1), "fill_interval": "1s"}


def _rate_limit_filter(tier: str, global_rps: int, global_burst: int, client_rps: int,
                       client_burst: int, enabled_default: int) -> dict[str, Any]:
    name = f"ratelimit_{tier}"
    return extension(
        "envoy.filters.http.local_ratelimit", "LocalRateLimit",
        stat_prefix=name,
        rate_limited_as_resource_exhausted=True,
        token_bucket=_bucket(global_rps, global_burst),
        filter_enabled={"runtime_key": tier_key(tier), "default_value": {
            "numerator": enabled_default, "denominator": "HUNDRED"}},
        filter_enforced={"runtime_key": RUNTIME_ENFORCED, "default_value": {
            "numerator": 100, "denominator": "HUNDRED"}},
        # Images: every call charges the declared images to the global images bucket and,
        # with an x-client-id, to that client's bucket. (The default bucket above counts
        # calls, one each, whatever they carry.)
        rate_limits=[
            {"actions": [{"generic_key": {"descriptor_key": "scope", "descriptor_value": "all"}}],
             "hits_addend": {"format": f"%REQ({DECLARED_IMAGES_HEADER})%"}},
            {"actions": [{"request_headers": {
                "header_name": "x-client-id", "descriptor_key": "client",
                "skip_if_absent": True}}],
             "hits_addend": {"format": f"%REQ({DECLARED_IMAGES_HEADER})%"}},
        ],
        descriptors=[{"entries": [{"key": "scope", "value": "all"}],
                      "token_bucket": _bucket(global_rps, global_burst)},
                     {"entries": [{"key": "client"}],
                      "token_bucket": _bucket(client_rps, client_burst)}],
        max_dynamic_descriptors=10000,
        # Tells a limited caller which tier refused it.
        response_headers_to_add=[{"header": {"key": "x-ratelimit-tier", "value": name},
                                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    )


def _declared_images_default() -> dict[str, Any]:
    """A call that declares nothing declares one image (Envoy would charge nothing for an
    absent header); the proxy refuses a declaration that is not a positive number."""
    return extension(
        "envoy.filters.http.header_mutation", "HeaderMutation",
        mutations={"request_mutations": [{"append": {
            "header": {"key": DECLARED_IMAGES_HEADER, "value": "1"},
            "append_action": "ADD_IF_ABSENT"}}]})


def rate_limit_filters(config: StackConfig) -> list[dict[str, Any]]:
    """The standard tier (on), then each stricter tier (off)."""
    filters = [_declared_images_default(),
               _rate_limit_filter(STANDARD, config.global_rps, config.global_burst,
                                  config.client_rps, config.client_burst, 100)]
    for tier, fraction in TIERS.items():
        filters.append(_rate_limit_filter(
            tier, int(config.global_rps * fraction), int(config.global_burst * fraction),
            int(config.client_rps * fraction), int(config.client_burst * fraction), 0))
    return filters


def runtime_defaults() -> dict[str, int]:
    """The runtime keys' start-up values (the admin layer overrides them at run time)."""
    return {tier_key(STANDARD): 100, RUNTIME_ENFORCED: 100, **{tier_key(t): 0 for t in TIERS}}
