import PgBoss from 'pg-boss';
import type { BenchPayload } from './system.js';
import type { BossJob, PgBossLibrary } from './pg-boss.js';

/**
 * pg-boss 10 with its best documented throughput settings: the lowest polling interval it accepts (0.5 s; it has
 * no LISTEN/NOTIFY in v10), batch fetches, and several workers per queue (each work() call adds one polling
 * worker). A v10 worker waits out the rest of its polling interval after every fetch that took less, so until the
 * database becomes the limit its throughput is about workers x batchSize per 0.5 s. Measured on this machine
 * (50,000 waiting jobs): 4 x 1000 8.2k/s, 8 x 1000 16k/s, 8 x 2000 32k/s, 4 x 5000 41k/s, 8 x 5000 44k/s.
 */
const POLLING_INTERVAL_SECONDS = 0.5;

const startAfter = (job: BossJob) => (job.startAfter ? { startAfter: job.startAfter } : {});

export const pgBoss10: PgBossLibrary = {
  name: 'pg-boss 10',
  tuning:
    `one work() call per worker, pollingIntervalSeconds ${POLLING_INTERVAL_SECONDS} (its minimum), ` +
    'no LISTEN/NOTIFY (v10 has none)',
  create({ url, schema, poolMax, onError }) {
    const boss = new PgBoss({
      connectionString: url,
      schema,
      max: poolMax,
      supervise: false,
      schedule: false,
    });
    boss.on('error', onError);
    return {
      async start() {
        await boss.start();
      },
      stop: () => boss.stop({ graceful: true, wait: true, timeout: 5_000 }),
      createQueue: (name) => boss.createQueue(name),
      subscribe: (event, name) => boss.subscribe(event, name),
      publish: (event, job, db) => boss.publish(event, job.data, { db, ...startAfter(job) }),
      async send(name, job, db) {
        await boss.send(name, job.data, { db, ...startAfter(job) });
      },
      insert: (name, jobs, db) =>
        boss.insert(
          jobs.map((j) => ({
            name,
            data: j.data,
            ...(j.startAfter ? { startAfter: j.startAfter.toISOString() } : {}),
          })),
          { db },
        ),
      async work(name, workers, batchSize, handler) {
        for (let i = 0; i < workers; i++) {
          await boss.work<BenchPayload>(
            name,
            { batchSize, pollingIntervalSeconds: POLLING_INTERVAL_SECONDS },
            (jobs) => {
              for (const j of jobs) handler(j.data);
              return Promise.resolve();
            },
          );
        }
      },
      offWork: (name) => boss.offWork(name),
    };
  },
};
