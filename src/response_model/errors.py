"""The errors the ``response-model`` command reports as one line on stderr, with their exit codes.

Exit codes (also in ``response-model --help`` and the README):

* 0 — done;
* 1 — done, but the answer is "no": invalid rows found (``validate``, ``ingest``, ``score``), promotion refused;
* 2 — usage or configuration error: a bad option, a configuration file that is malformed or does not
  follow its schema, an input file that is not what the source configuration expects, no
  pseudonymisation key;
* 3 — the model is not there: a registered model name, version or alias that does not exist, a model
  folder without a model, a service that cannot load its model.

This module imports nothing heavy: the command line catches these classes around every command.
"""

from __future__ import annotations

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_MODEL = 3

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 invalid rows found or promotion refused; 2 usage or configuration error "
    "(bad option, malformed or misspelt configuration, input file not what its source expects, no "
    "pseudonymisation key); 3 model not found or unavailable (no such registered name, version or alias)."
)


class ResponseModelError(Exception):
    """An error the user can fix; ``exit_code`` is the command's exit status when it is raised."""

    exit_code = EXIT_USAGE


class ConfigError(ResponseModelError, ValueError):
    """A configuration file that cannot be used: names the file, and where known the key, line and column."""


class InputError(ResponseModelError, ValueError):
    """An input file or cohort that cannot be used as it is: names the file, and where known the line and column."""


class ModelNotFoundError(ResponseModelError, LookupError):
    """A model URI that names nothing: no such registered model, version or alias, or no model in a folder."""

    exit_code = EXIT_MODEL
