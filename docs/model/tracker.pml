/* The tracker's mark-before-acknowledge rule, the activity log and the state file, as
 * ChangeTracker.swift implements them (mark, writeLogBatch, persistState), checked with spin.
 *
 *   spin -a tracker.pml && cc -O2 -o pan pan.c && ./pan -m100000      (Tools/model-check)
 *
 * Two writers write two extents (WRITES writes each), a persister saves the state at any
 * moment, a backup's checkpoint commits what was written so far (the claim then starts
 * afresh), and the process can crash at any step: every variable in memory is lost, and
 * recovery rebuilds the dirty map from the state file plus the log records newer than it.
 * The claim: after recovery every acknowledged write is marked written, and every
 * acknowledged trim at least as reading zero (a backup then reads what it must).
 *
 * The activity log is a ring of SLOTS records; a record is written with its sync (the write
 * is acknowledged only after the sync). A mark into an extent that is "hot" (logged since
 * the last state the file holds) writes no record. Compile with -DMUTANT=1 to drop the rule
 * "a record at or below the encoded sequence does not make its extent hot" (persistState's
 * `encodedLogSequence`), or -DMUTANT=2 to drop "persist before a record overwrites one the
 * state file does not hold yet" (ringFull): spin then finds the lost write. */

#define EXTENTS 2
#define SLOTS 2
#define WRITES 2             /* per writer: a trim, then a write */
#define NONE 255

/* memory */
byte dirty[EXTENTS];           /* 0 clean, 1 reads as zero (a trim), 2 written: read it */
byte hot[EXTENTS];            /* log sequence that made the extent hot, 0 = not hot */
bool pending[EXTENTS];
byte lastAssigned = 0;        /* last log sequence handed out */
byte encoded = 0;             /* highest log sequence a state encoding covers */
byte persisted = 0;           /* highest log sequence the state file holds */
byte nextBatch = 1;
byte durableBatch = 0;
bool stateLock = 0, logLock = 0, persistLock = 0;
bool ioExclusive = 0;         /* a checkpoint holds the disk's I/O lock exclusive */
byte inflight = 0;            /* writes between their mark and their acknowledgement */

/* disk */
byte fileDirty[EXTENTS];
byte fileSeq = 0;
byte ringSeq[SLOTS];
byte ringExtent[SLOTS];

/* the oracle */
byte acked[EXTENTS];           /* the kind of the last acknowledged change (0 none) */
bool crashed = 0;

inline lock(l) { atomic { !l && !crashed -> l = 1 } }
inline unlock(l) { l = 0 }

/* persistState: encode under the state lock, write the file durably, then note it. */
inline persist() {
    byte snapSeq, snap0, snap1;
    lock(persistLock);
    lock(stateLock);
    snapSeq = lastAssigned;
    snap0 = dirty[0]; snap1 = dirty[1];
    if :: encoded < snapSeq -> encoded = snapSeq :: else -> skip fi;
    if :: hot[0] != 0 && hot[0] <= snapSeq -> hot[0] = 0 :: else -> skip fi;
    if :: hot[1] != 0 && hot[1] <= snapSeq -> hot[1] = 0 :: else -> skip fi;
    unlock(stateLock);
    atomic { !crashed -> fileDirty[0] = snap0; fileDirty[1] = snap1; fileSeq = snapSeq }   /* temp + fsync + rename */
    lock(stateLock);
    if :: persisted < snapSeq -> persisted = snapSeq :: else -> skip fi;
    unlock(stateLock);
    unlock(persistLock)
}

/* writeLogBatch: the batch's pending extents become records, each with its sequence. */
inline writeLogBatch(batch) {
    byte e, q, id; bool ringFull; byte w0, w1;   /* sequences written for extents 0 and 1 */
    lock(logLock);
    if
    :: durableBatch >= batch -> skip
    :: else ->
        w0 = NONE; w1 = NONE;
        lock(stateLock);
        id = nextBatch; nextBatch++;
        bool p0 = pending[0], p1 = pending[1];
        pending[0] = 0; pending[1] = 0;
        unlock(stateLock);
        e = 0;
        do
        :: e < EXTENTS ->
            if
            :: (e == 0 && p0) || (e == 1 && p1) ->
                lock(stateLock);
                lastAssigned++; q = lastAssigned;
                ringFull = (q > SLOTS && q - SLOTS > persisted);
                unlock(stateLock);
#if MUTANT != 2
                if :: ringFull -> persist() :: else -> skip fi;
#endif
                atomic { !crashed -> ringSeq[q % SLOTS] = q; ringExtent[q % SLOTS] = e }  /* append + sync */
                if :: e == 0 -> w0 = q :: else -> w1 = q fi
            :: else -> skip
            fi;
            e++
        :: else -> break
        od;
        durableBatch = id;
        lock(stateLock);
#if MUTANT == 1
        if :: w0 != NONE -> hot[0] = w0 :: else -> skip fi;
        if :: w1 != NONE -> hot[1] = w1 :: else -> skip fi;
#else
        if :: w0 != NONE && w0 > encoded -> hot[0] = w0 :: else -> skip fi;
        if :: w1 != NONE && w1 > encoded -> hot[1] = w1 :: else -> skip fi;
#endif
        unlock(stateLock)
    fi;
    unlock(logLock)
}

/* A VM's changes to extent x, a trim then writes: mark (memory, then the log if the extent is
 * not hot), then the data write, then the acknowledgement. A log record names extents only:
 * recovery marks them written (read them), which is right for a trim too. */
proctype Writer(byte x) {
    byte n = 0, batch, kind; bool needsLog;
    do
    :: n < WRITES ->
        atomic { !ioExclusive && !crashed -> inflight++ };
        kind = (n == 0 -> 1 : 2);
        lock(stateLock);
        dirty[x] = kind;
        needsLog = (hot[x] == 0);
        if :: needsLog -> pending[x] = 1 :: else -> skip fi;
        batch = nextBatch;
        unlock(stateLock);
        if :: needsLog -> writeLogBatch(batch) :: else -> skip fi;
        atomic { !crashed -> acked[x] = kind; inflight-- };
        n++
    :: else -> break
    od
}

/* A backup's checkpoint, committed: with every write drained (the I/O lock exclusive), what
 * was written so far is backed up, so the claim starts afresh; durable before it returns. */
proctype Checkpoint() {
    atomic { !ioExclusive && inflight == 0 && !crashed -> ioExclusive = 1 };
    lock(stateLock);
    dirty[0] = 0; dirty[1] = 0;
    atomic { !crashed -> acked[0] = 0; acked[1] = 0 };
    unlock(stateLock);
    persist();
    ioExclusive = 0
}

proctype Persister() {
    do
    :: persist()
    :: break
    od
}

/* The crash: from now on no step of the others changes anything; then recovery. */
proctype Crash() {
    byte s, rec[EXTENTS];
    atomic {
        crashed = 1;
        rec[0] = fileDirty[0]; rec[1] = fileDirty[1];
        s = 0;
        do
        :: s < SLOTS -> if :: ringSeq[s] > fileSeq -> rec[ringExtent[s]] = 2 :: else -> skip fi; s++
        :: else -> break
        od;
        /* A write must be read again; a trim must at least read as zero (reading it is fine). */
        assert(acked[0] != 2 || rec[0] == 2); assert(acked[0] != 1 || rec[0] >= 1);
        assert(acked[1] != 2 || rec[1] == 2); assert(acked[1] != 1 || rec[1] >= 1)
    }
}

init {
    atomic {
        run Writer(0); run Writer(1); run Persister(); run Checkpoint(); run Crash()
    }
}
