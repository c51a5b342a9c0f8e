"""Every stage of a recipe, in pipeline order: ingest → dedup → embed → filters → select → experts →
fuse → export. Each module holds stage classes registered by name in :mod:`loupe.pipeline.registry`;
the executors (:mod:`loupe.pipeline.executors`) run them under the stage contract of ARCHITECTURE.md."""
