import { PgBoss } from 'pg-boss-12';
import type { BenchPayload } from './system.js';
import type { BossJob, PgBossLibrary } from './pg-boss.js';

/**
 * pg-boss 12 (Node 22+, so the bench runs it in a Node 24 child process) with its documented settings for
 * throughput and latency: LISTEN/NOTIFY (useListenNotify, and every queue created with notify: a job that is due
 * at once wakes the workers from the producer's COMMIT), burstWhenBatchFull (a worker whose fetch came back full
 * fetches again at once instead of waiting out its polling interval, the limit of v10), and one work() call with
 * localConcurrency workers. Both polling intervals at their minimum, 0.5 s: a job that becomes due later
 * (startAfter) sends no NOTIFY and is found by polling only, which with notify active runs every
 * notifyPollingIntervalSeconds (30 s by default). registerInstance off like supervise and schedule: a background
 * heartbeat. OpenTelemetry stays at its default, a no-op without an SDK.
 */
const POLLING_INTERVAL_SECONDS = 0.5;

const startAfter = (job: BossJob) => (job.startAfter ? { startAfter: job.startAfter } : {});

export const pgBoss12: PgBossLibrary = {
  name: 'pg-boss 12',
  tuning:
    'one work() with localConcurrency = workers, burstWhenBatchFull, LISTEN/NOTIFY (useListenNotify, queues ' +
    `with notify), pollingIntervalSeconds and notifyPollingIntervalSeconds ${POLLING_INTERVAL_SECONDS} (their ` +
    'minimum; jobs due later are found by polling), registerInstance off',
  create({ url, schema, poolMax, onError }) {
    const boss = new PgBoss({
      connectionString: url,
      schema,
      max: poolMax,
      supervise: false,
      schedule: false,
      registerInstance: false,
      useListenNotify: true,
    });
    boss.on('error', onError);
    return {
      async start() {
        await boss.start();
      },
      stop: () => boss.stop({ graceful: true, timeout: 5_000 }),
      createQueue: (name) => boss.createQueue(name, { notify: true }),
      subscribe: (event, name) => boss.subscribe(event, name),
      publish: (event, job, db) => boss.publish(event, job.data, { db, ...startAfter(job) }),
      async send(name, job, db) {
        await boss.send(name, job.data, { db, ...startAfter(job) });
      },
      async insert(name, jobs, db) {
        await boss.insert(
          name,
          jobs.map((j) => ({
            data: j.data,
            ...(j.startAfter ? { startAfter: j.startAfter.toISOString() } : {}),
          })),
          { db },
        );
      },
      async work(name, workers, batchSize, handler) {
        await boss.work<BenchPayload>(
          name,
          {
            batchSize,
            localConcurrency: workers,
            burstWhenBatchFull: true,
            pollingIntervalSeconds: POLLING_INTERVAL_SECONDS,
            notifyPollingIntervalSeconds: POLLING_INTERVAL_SECONDS,
          },
          (jobs) => {
            for (const j of jobs) handler(j.data);
            return Promise.resolve();
          },
        );
      },
      offWork: (name) => boss.offWork(name),
    };
  },
};
