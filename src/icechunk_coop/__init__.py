"""Many workers, one atomic Icechunk commit.

The public API lives here; modules with a leading underscore are private.
"""

from icechunk_coop._errors import (
    AlreadyCommittedError,
    BranchKeptMovingError,
    CommitConflictError,
    ConfigurationError,
    CoopError,
    ForeignPayloadError,
    ForeignResultError,
    IcechunkVersionError,
    IdentityError,
    MissingSecretError,
    PayloadAuthenticationError,
    PayloadError,
    PayloadFormatError,
    WaitTimeoutError,
    WorkerFailedError,
    WorkersTotalMismatchError,
)
from icechunk_coop._identity import WorkerIdentity
from icechunk_coop._payload import INSECURE_ENV, SECRET_ENV, Sealer
from icechunk_coop._rendezvous import Rendezvous, normalise_url
from icechunk_coop._storage import icechunk_storage
from icechunk_coop._targets import IcechunkTarget, Stores, ZarrTarget
from icechunk_coop._waiting import WaitPolicy
from icechunk_coop.cooperative import CooperativeJob, WorkerOutcome
from icechunk_coop.dynamical import worker_share

__all__ = [
    "INSECURE_ENV",
    "SECRET_ENV",
    "AlreadyCommittedError",
    "BranchKeptMovingError",
    "CommitConflictError",
    "ConfigurationError",
    "CoopError",
    "CooperativeJob",
    "ForeignPayloadError",
    "ForeignResultError",
    "IcechunkTarget",
    "IcechunkVersionError",
    "IdentityError",
    "MissingSecretError",
    "PayloadAuthenticationError",
    "PayloadError",
    "PayloadFormatError",
    "Rendezvous",
    "Sealer",
    "Stores",
    "WaitPolicy",
    "WaitTimeoutError",
    "WorkerFailedError",
    "WorkerIdentity",
    "WorkerOutcome",
    "WorkersTotalMismatchError",
    "ZarrTarget",
    "icechunk_storage",
    "normalise_url",
    "worker_share",
]
