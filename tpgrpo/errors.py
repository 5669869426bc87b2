"""The error types every layer raises; the CLI turns them into one message and exit code 2.

A user mistake (bad config, unknown run, bad argument) is a `UserError`; a fault found in stored
data is a `DataError`. Both carry a message that says what is wrong and what to do about it.
"""

from __future__ import annotations


class TpgrpoError(Exception):
    """Base class of every error this package raises on purpose."""


class UserError(TpgrpoError, ValueError):
    """Bad input from the user: config, CLI arguments, prompt files, run ids."""


class ConfigError(UserError):
    """One or more problems in a configuration, reported together.

    Args:
        problems (`list[str]`): every problem found, each naming the key and the fix.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class DataError(TpgrpoError):
    """Stored data is missing, unfinished, corrupted or of the wrong schema."""


class RewardError(TpgrpoError):
    """A reward model failed (unreachable server, garbage or non-finite scores)."""


class RunLockedError(UserError):
    """Another process holds the run's lock."""


class StorageAccessError(UserError):
    """The runs root cannot be used as given: no S3 credentials, an unreachable endpoint, a missing
    bucket, access refused, or a local path that is a file. The message names the root, the cause
    and the fix."""
