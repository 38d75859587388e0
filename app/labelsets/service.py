"""The label-set service as the API and the command line use it: the store chosen by the settings, and
focused parts over one repository.

- ``repository`` (``app/labelsets/repository.py``): label sets in memory, versions, locks, create /
  change / delete, readiness, the replica hook of ``LabelSetSync``;
- ``support`` (``support.py``): support images → class prototypes;
- ``calibration`` (``calibration.py``): the reject rule, its settings and their evidence;
- ``adaptation`` (``adaptation_writer.py``): the opt-in test-time prototype cache;
- ``transfer`` (``transfer.py``): export and import.
"""

from __future__ import annotations

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.labelsets.adaptation_writer import TestTimeAdaptation
from app.labelsets.calibration import LabelSetCalibrator
from app.labelsets.postgres_store import PostgresStore
from app.labelsets.repository import LabelSetRepository
from app.labelsets.store import DirectoryStore, LabelSetStore
from app.labelsets.support import SupportImages
from app.labelsets.transfer import LabelSetTransfer


def create_store(settings: Settings) -> LabelSetStore:
    """The label-set store: PostgreSQL when ``TRUSTSERVE_DATABASE_URL`` is set, else the directory store
    (``TRUSTSERVE_STORE_DIR``). Blocks while the database is unreachable (a replica waits for it)."""
    if settings.database_url is not None:
        return PostgresStore(settings.database_url.get_secret_value())
    return DirectoryStore(settings.store_dir)


class LabelSetService:
    """Every label-set operation, by concern; ``store`` is the one every part writes through."""

    def __init__(self, store: LabelSetStore, engine: ClassificationEngine, settings: Settings) -> None:
        self.store = store
        self.repository = LabelSetRepository(store, engine, settings)
        self.support = SupportImages(self.repository, engine)
        self.calibration = LabelSetCalibrator(self.repository, engine, settings)
        self.adaptation = TestTimeAdaptation(self.repository)
        self.transfer = LabelSetTransfer(self.repository)

    async def stop(self) -> None:
        """Wait for background cache writes, then close a database store's connections."""
        await self.adaptation.stop()
        if isinstance(self.store, PostgresStore):
            self.store.close()
