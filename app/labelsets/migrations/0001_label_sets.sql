-- Label sets shared by every replica. `label_sets` is the head (one row per label set, the committed
-- version); `label_set_versions` holds each version's content (the last few are kept for audit and
-- rollback); `label_set_blobs` holds derived data (serialised FAISS indexes) per version.
CREATE TABLE label_sets (
    id          text PRIMARY KEY,
    version     integer NOT NULL CHECK (version >= 1),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),  -- tells a re-created label set apart
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE label_set_versions (
    label_set_id   text NOT NULL REFERENCES label_sets (id) ON DELETE CASCADE,
    version        integer NOT NULL CHECK (version >= 1),
    meta           jsonb NOT NULL,                  -- LabelSetMeta (labels, templates, calibration, ...)
    calibration    jsonb GENERATED ALWAYS AS (meta -> 'calibration') STORED,
    arrays         bytea NOT NULL,                  -- safetensors: text embeddings, prototype sums, ...
    arrays_sha256  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (label_set_id, version)
);

CREATE TABLE label_set_blobs (
    label_set_id  text NOT NULL,
    version       integer NOT NULL,
    name          text NOT NULL,
    data          bytea NOT NULL,
    sha256        text NOT NULL,
    PRIMARY KEY (label_set_id, version, name),
    FOREIGN KEY (label_set_id, version) REFERENCES label_set_versions (label_set_id, version) ON DELETE CASCADE
);

-- Every committed change of a head row is announced to the replicas (delivered at commit, never for a
-- rolled-back write). Payload: {"schema", "id", "version"}; version 0 means deleted.
CREATE FUNCTION label_sets_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'trustserve_label_sets',
        json_build_object(
            'schema', TG_TABLE_SCHEMA,
            'id', CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,
            'version', CASE WHEN TG_OP = 'DELETE' THEN 0 ELSE NEW.version END
        )::text
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER label_sets_changed
    AFTER INSERT OR UPDATE OR DELETE ON label_sets
    FOR EACH ROW EXECUTE FUNCTION label_sets_notify();
