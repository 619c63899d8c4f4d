"""`version_policy.next_action`: TF Serving's AvailabilityPreservingPolicy, without threads.

Cases follow TF Serving's `core/availability_preserving_policy_test.cc` (named per test), plus
the fixed-point property the manager relies on.
"""

import itertools

import pytest

from keras_dropout.serving.version_policy import STATES, Action, VersionState, next_action


def versions(*specs):
    return [VersionState(version, state, aspired) for version, state, aspired in specs]


def test_unaspired_available_versions_unload_lowest_first():
    # TFS: availability_preserving_policy_test.cc UnloadsNonAspiredFirst
    snapshot = versions(
        (1, "AVAILABLE", False), (2, "AVAILABLE", False), (3, "AVAILABLE", True), (4, "NEW", True)
    )
    assert next_action(snapshot) == Action("unload", 1)


def test_loads_the_highest_new_aspired_version():
    # TFS: availability_preserving_policy_test.cc LoadsFirstAspiredWhenNoneLoaded
    snapshot = versions((1, "NEW", True), (2, "NEW", True), (3, "LOADING", True))
    assert next_action(snapshot) == Action("load", 2)


def test_keeps_the_only_serving_version_until_an_aspired_one_is_available():
    # TFS: availability_preserving_policy_test.cc ReturnsNoActionWhenNoneReady... (the policy's point)
    loading = versions((1, "AVAILABLE", False), (2, "LOADING", True))
    assert next_action(loading) is None
    failed = versions((1, "AVAILABLE", False), (2, "END", True))
    assert next_action(failed) is None
    ready = versions((1, "AVAILABLE", False), (2, "AVAILABLE", True))
    assert next_action(ready) == Action("unload", 1)


def test_unloads_when_nothing_is_aspired():
    # TFS: availability_preserving_policy_test.cc UnloadsWhenNoAspired (a model removed from config)
    assert next_action(versions((3, "AVAILABLE", False))) == Action("unload", 3)


def test_several_unaspired_serving_versions_unload_down_to_one():
    # TFS: availability_preserving_policy_test.cc UnloadsMultipleNonAspired
    snapshot = versions((1, "AVAILABLE", False), (2, "AVAILABLE", False), (3, "LOADING", True))
    assert next_action(snapshot) == Action("unload", 1)
    assert next_action(versions((2, "AVAILABLE", False), (3, "LOADING", True))) is None


def test_versions_named_by_a_specific_policy_are_kept():
    # TFS: availability_preserving_policy.cc GetSpecificVersionsInConfig
    snapshot = versions((1, "AVAILABLE", False), (2, "AVAILABLE", True))
    assert next_action(snapshot, keep={1}) is None


def test_nothing_to_do():
    assert next_action([]) is None
    assert next_action(versions((1, "AVAILABLE", True), (0, "END", False))) is None


def test_unknown_state_is_refused():
    with pytest.raises(ValueError, match="state"):
        VersionState(1, "READY", True)


def _apply(snapshot, action):
    after = {"load": "AVAILABLE", "unload": "END"}[action.kind]
    return [
        VersionState(v.version, after if v.version == action.version else v.state, v.aspired)
        for v in snapshot
    ]


@pytest.mark.parametrize("seed", range(3))
def test_idempotent_and_reaches_a_fixed_point(seed):
    # Every snapshot of three versions: asking twice gives the same answer (stateless), and
    # acting on each answer ends within one action per version, never leaving the model
    # without a serving version while one was serving and one is aspired.
    choices = list(itertools.product(STATES, (False, True)))
    for combo in itertools.islice(itertools.product(choices, repeat=3), seed, None, 3):
        snapshot = [VersionState(v + 1, state, aspired) for v, (state, aspired) in enumerate(combo)]
        # With nothing aspired (a model dropped from the config) everything unloads.
        was_serving = any(v.state == "AVAILABLE" for v in snapshot) and any(
            v.aspired for v in snapshot
        )
        for _ in range(2 * len(snapshot) + 1):
            action = next_action(snapshot)
            assert action == next_action(list(snapshot))
            if action is None:
                break
            snapshot = _apply(snapshot, action)
            if was_serving:
                assert any(v.state == "AVAILABLE" for v in snapshot), combo
        else:
            pytest.fail(f"no fixed point from {combo}")
