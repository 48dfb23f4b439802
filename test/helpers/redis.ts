import { createClient } from 'redis';

/** The Redis the tests use: REDIS_URL, else the local one. */
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** Redis is optional on a new user's machine (its tests are skipped there); CI and this machine have one. */
export async function redisAnswers(): Promise<boolean> {
  const probe = createClient({ url: REDIS_URL, socket: { connectTimeout: 1000, reconnectStrategy: false } });
  probe.on('error', () => undefined);
  try {
    await probe.connect();
    await probe.ping();
    return true;
  } catch {
    return false;
  } finally {
    await probe.close().catch(() => undefined);
  }
}
