"""The on-disk protocol: how a directory becomes a LightningStore. Private; the public API is
:class:`store_fs.store.FileStore`. docs/format.md describes every file; docs/architecture.md
the layers.

Code map, one module a line: the files it owns (paths under the store root) and the
invariant it keeps.

Foundations (no store knowledge):
    fsio             every write: temp file + rename/link; ``publish`` appears whole, ``create_exclusive``
                     succeeds for exactly one writer, ``move`` (rename) for exactly one mover.
    group_sync       group commit: threads of a process syncing one path at once share one sync,
                     each returning only after a sync that began after its write.
    codec            every byte of every record and log line: orjson, sorted keys for records but revisions.
    layout           every path: only it turns (validated) ids into paths.
    format_file      ``FORMAT.json``: the format version and the store's durability setting, which
                     every opener uses at least; changed only whole, under the maintenance lock.
    ids              id formats and checks: no id reaches ``layout`` unless it is safe in a path.
    context          what the components share (layout, clock, durability, per-process state
                     rebuilt after ``fork``).
    server_clock     ``locks/clock.<host>``: this host's offset from the file server's clock, so
                     every age (grace periods, heartbeat silence) is judged on one clock.

Rollouts and the queue:
    rollout_history  ``rollouts/<2 hex>/<id>/history/NNNNNNNN.json`` (+ ``rollout.json`` hard link):
                     every change is a new revision made by exclusive link; the newest is the truth.
    record_peek      the newest revision as plain JSON, uncached: for bulk readers (data views).
    status_rules     pure rules (no I/O): how attempt outcomes move a rollout, retries, sticky cancel.
    queue_tokens     ``queue/{pending,claimed,done,expired}/``: names say what a token stands for;
                     whoever renames a token out of ``claimed/`` decides that attempt, exactly once.
    claims           the claim / commit / requeue protocol: ``Engine.claim_next`` renames a pending
                     token into ``claimed/`` and ``Engine.begin`` turns it into attempt ``seq`` of the
                     record (this is where a queued rollout becomes an attempt); ``settle`` and
                     ``apply`` commit an outcome and apply the retry rule.
    reaper           nothing of its own: reads ``claimed/`` and heartbeats, expires an attempt past
                     ``timeout_seconds`` or silent ``unresponsive_seconds`` by renaming its token (the
                     winner of that rename alone applies the retry rule). It decides unresponsiveness.

Spans, heartbeats and workers:
    span_log         ``.../attempts/<seq>-<attempt_id>/spans.<writer>.jsonl`` (one file per writing
                     process; each span one ``write(2)``), ``heartbeat.<writer>`` counters, and
                     ``span-seq/`` (the rollout-wide sequence: one rename per allocation; the
                     first allocation makes it).
    span_read        reading span files: decodes only bytes appended since this process last read.
    span_decode      span objects from parsed lines without pydantic re-validation (same objects).
    worker_logs      ``workers/<worker_id>/log.<writer>.jsonl``: per-process change logs folded
                     by time into upstream's ``Worker``.

Resources, indexes, change feed and waits:
    resource_versions ``resources/{objects,by-id,versions}/``: content-addressed bodies; versions
                     allocated by exclusive create, so two publishers never share a number.
    rollout_index    ``index/rollouts/<writer>.jsonl``: one line per revision; a cache of status and
                     counts (the highest revision wins; ``pruned`` tombstones), never the truth.
    index_snapshot   ``index/rollouts/snapshot.json``: the merged index at one position, by status, so a
                     cold listing of one status merges only that status.
    index_cursor     positions in the index logs: which rollouts finished since (data cursors).
    change_feed      ``events/<writer>.jsonl``: one line per status change; wakes waiters (a hint).
    log_segments     ``<prefix>@seg-<µs>-<writer>.jsonl``: per-writer logs of exited processes merged
                     into one file; readers see every line once, also mid-compaction and after a kill.
    log_compaction   compacting the index, feed and worker logs (``agl compact``; by itself when a
                     reader meets too many logs), under the maintenance lock.
    watch            waiting for the change feed (inotify, or polling on network filesystems).
    check            ``agl check [--fix]``: finds damage and half-done work; repairs what a crashed writer
                     left half done and takes out what cannot be read (into quarantine).
    check_findings   what the checks share: a finding, lines cut out of a log into quarantine.
    check_resources  ``agl check`` of ``resources/``: bodies hashed, versions and publications read;
                     reported only (nothing to rebuild them from).
    check_workers    ``agl check`` of ``workers/``: unreadable log lines; ``--fix`` quarantines them
                     where nobody appends any more.
    maintenance      ``locks/maintenance.lock``: one repair, prune, compaction or migration at a time;
                     never on the hot path.
    removal          ``trash/<run>/``: ``agl prune``'s removals, one rename per rollout, tombstones,
                     archive; a run a crash interrupted is finished by the next prune or check --fix.
    quarantine       ``quarantine/<time>-<writer>/``: what a repair took out, never deleted, with notes.
"""
