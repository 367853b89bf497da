"""The state database's schema, as numbered migrations (``PRAGMA user_version`` is the count
applied). Append only: a released migration is never edited."""

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        productionStatus TEXT NOT NULL DEFAULT 'stopped',
        productionPort INTEGER,
        productionUrl TEXT,
        productionError TEXT,
        productionStartedAt TEXT,
        productionHash TEXT,
        latestHash TEXT,
        observedGeneration INTEGER,
        failedDigest TEXT,
        desiredDigest TEXT,
        lastGoodSpec TEXT,
        updatedAt TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        deployment INTEGER,
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        generation INTEGER,
        hash TEXT,
        createdAt TEXT NOT NULL,
        startedAt TEXT,
        finishedAt TEXT,
        error TEXT
    );
    CREATE INDEX jobs_by_project ON jobs (project, id);
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        kind TEXT NOT NULL,
        generation INTEGER,
        state TEXT NOT NULL,
        createdAt TEXT NOT NULL,
        finishedAt TEXT
    );
    CREATE INDEX deployments_by_project ON deployments (project, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        deployment INTEGER,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        createdAt TEXT NOT NULL
    );
    CREATE INDEX events_by_project ON events (project, id);
    CREATE TABLE instances (
        project TEXT NOT NULL,
        hash TEXT NOT NULL,
        runtime TEXT NOT NULL,
        port INTEGER,
        pid INTEGER,
        pidStart INTEGER,
        containerId TEXT,
        role TEXT NOT NULL,
        startedAt TEXT NOT NULL,
        PRIMARY KEY (project, hash)
    );
    CREATE TABLE ports (
        port INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        hash TEXT,
        reservedAt TEXT NOT NULL
    );
    """,
    # 2: a deployment names the desired spec it works for, and why it failed
    """
    ALTER TABLE deployments ADD COLUMN digest TEXT;
    ALTER TABLE deployments ADD COLUMN error TEXT
    """,
    # 3: the edge: each project's stable public port and its two internal slot ports, and
    # how the edge process is doing (one row)
    """
    CREATE TABLE sites (
        project TEXT PRIMARY KEY,
        publicPort INTEGER NOT NULL UNIQUE,
        slotA INTEGER UNIQUE,
        slotB INTEGER UNIQUE,
        reservedAt TEXT NOT NULL
    );
    CREATE TABLE edge (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        pid INTEGER,
        version TEXT,
        sites INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        loadedAt TEXT,
        updatedAt TEXT NOT NULL
    )
    """,
    # 4: an instance is a version run with some settings (config): two of one version may
    # run side by side while one replaces the other, so the key is version + config
    """
    CREATE TABLE instances_v4 (
        project TEXT NOT NULL,
        key TEXT NOT NULL,
        hash TEXT NOT NULL,
        config TEXT,
        runtime TEXT NOT NULL,
        port INTEGER,
        pid INTEGER,
        pidStart INTEGER,
        containerId TEXT,
        role TEXT NOT NULL,
        startedAt TEXT NOT NULL,
        PRIMARY KEY (project, key)
    );
    INSERT INTO instances_v4 (project, key, hash, config, runtime, port, pid, pidStart,
        containerId, role, startedAt)
        SELECT project, hash, hash, NULL, runtime, port, pid, pidStart, containerId, role,
        startedAt FROM instances;
    DROP TABLE instances;
    ALTER TABLE instances_v4 RENAME TO instances
    """,
    # 5: the daemon's liveness, for readers that never talk to it (the API, the CLI)
    """
    CREATE TABLE daemon (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        runtime TEXT NOT NULL,
        startedAt TEXT NOT NULL,
        pulse REAL NOT NULL,
        stoppedAt TEXT
    )
    """,
    # 6: a revision per project, bumped by every change to what its status is read from, so
    # a reader can tell which projects changed since it last looked without reading them
    """
    CREATE TABLE revisions (
        project TEXT PRIMARY KEY,
        rev INTEGER NOT NULL
    );
    CREATE INDEX revisions_by_rev ON revisions (rev);
    CREATE TRIGGER projects_insert_rev AFTER INSERT ON projects BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.id, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER projects_update_rev AFTER UPDATE ON projects BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.id, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER projects_delete_rev AFTER DELETE ON projects BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (OLD.id, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER deployments_insert_rev AFTER INSERT ON deployments BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER deployments_update_rev AFTER UPDATE ON deployments BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER deployments_delete_rev AFTER DELETE ON deployments BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (OLD.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER jobs_insert_rev AFTER INSERT ON jobs BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER jobs_update_rev AFTER UPDATE ON jobs BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER jobs_delete_rev AFTER DELETE ON jobs BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (OLD.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER instances_insert_rev AFTER INSERT ON instances BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER instances_update_rev AFTER UPDATE ON instances BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER instances_delete_rev AFTER DELETE ON instances BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (OLD.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER sites_insert_rev AFTER INSERT ON sites BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER sites_update_rev AFTER UPDATE ON sites BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER sites_delete_rev AFTER DELETE ON sites BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (OLD.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    """,
    # 7: sources. What the latest release was built from (a commit, or a source dir's
    # fingerprint), and where each followed source stands now (the tip its ref points at,
    # or why it could not be read)
    """
    ALTER TABLE projects ADD COLUMN latestSource TEXT;
    CREATE TABLE sources (
        project TEXT PRIMARY KEY,
        rev TEXT,
        detail TEXT,
        error TEXT,
        checkedAt TEXT NOT NULL
    );
    CREATE TRIGGER sources_insert_rev AFTER INSERT ON sources BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER sources_update_rev AFTER UPDATE ON sources BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (NEW.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    CREATE TRIGGER sources_delete_rev AFTER DELETE ON sources BEGIN
        INSERT INTO revisions (project, rev)
        VALUES (OLD.project, (SELECT COALESCE(MAX(rev), 0) + 1 FROM revisions))
        ON CONFLICT (project) DO UPDATE SET rev = excluded.rev;
    END;
    """,
    # 8: the daemon's metrics (Prometheus exposition text), written with its pulse, for the
    # API to serve whether it runs in the daemon's process or beside it
    """
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        text BLOB NOT NULL,
        writtenAt REAL NOT NULL
    )
    """,
    # 9: swarm services: how many of a project's tasks run of how many wanted ("2/2")
    """
    ALTER TABLE projects ADD COLUMN productionReplicas TEXT
    """,
    # 10: what each instance uses (memory in bytes, CPU in percent of one core), as the
    # daemon last sampled it
    """
    ALTER TABLE instances ADD COLUMN memory INTEGER;
    ALTER TABLE instances ADD COLUMN cpu REAL;
    ALTER TABLE instances ADD COLUMN usageAt TEXT
    """,
    # 11: what became of each version: when it first served, or why its last start failed
    # (history tells a version that never went live from a good one); the versions that
    # served before are found in the events that said so
    """
    CREATE TABLE versions (
        project TEXT NOT NULL,
        hash TEXT NOT NULL,
        servedAt TEXT,
        failedAt TEXT,
        error TEXT,
        PRIMARY KEY (project, hash)
    );
    INSERT OR IGNORE INTO versions (project, hash, servedAt)
        SELECT project, json_extract(data, '$.hash'), MIN(createdAt) FROM events
        WHERE type = 'production.ready' AND json_extract(data, '$.hash') IS NOT NULL
        GROUP BY project, json_extract(data, '$.hash');
    INSERT OR IGNORE INTO versions (project, hash, servedAt)
        SELECT id, productionHash, COALESCE(productionStartedAt, updatedAt) FROM projects
        WHERE productionHash IS NOT NULL AND productionStartedAt IS NOT NULL;
    """,
    # 12: what set each deployment off (an API call, a push, a webhook, a file edit, a
    # repair), noted by whoever asked and taken by the deployment it caused; and samples of
    # each site's traffic and use, a minute apart, for the dashboard's charts of the last hour
    """
    ALTER TABLE deployments ADD COLUMN trigger TEXT;
    CREATE TABLE triggers (
        project TEXT PRIMARY KEY,
        what TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE samples (
        project TEXT NOT NULL,
        at REAL NOT NULL,
        requests REAL,
        errors REAL,
        seconds REAL,
        memory INTEGER,
        cpu REAL
    );
    CREATE INDEX samples_by_project ON samples (project, at)
    """,
    # 13: the hour's retention deletes by time alone (it scanned every sample)
    """
    CREATE INDEX samples_by_time ON samples (at)
    """,
]
