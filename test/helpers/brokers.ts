import net from 'node:net';

/** The brokers the forwarding tests use: AMQP_URL / NATS_URL, else the local ones these machines run. */
export const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
export const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';

function answers(url: string, defaultPort: number): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port || defaultPort), timeout: 1000 });
    const done = (up: boolean) => {
      socket.destroy();
      resolve(up);
    };
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
    socket.once('timeout', () => done(false));
  });
}

/**
 * True when the broker does not answer, after one line saying which tests skip: a new user's `npm test` passes
 * without RabbitMQ or NATS; CI and these machines run both (.ci/run starts them).
 */
export async function brokerMissing(broker: 'RabbitMQ' | 'NATS', tests: string): Promise<boolean> {
  const url = broker === 'RabbitMQ' ? AMQP_URL : NATS_URL;
  if (await answers(url, broker === 'RabbitMQ' ? 5672 : 4222)) return false;
  console.warn(`${tests} skipped: no ${broker} at ${url.replace(/\/\/[^@]*@/, '//')}`);
  return true;
}
