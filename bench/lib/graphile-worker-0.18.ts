import * as graphile from 'graphile-worker-0.18';
import type { GraphileLibrary } from './graphile-worker.js';

/** graphile-worker 0.18 (Node 22.18+): the bench runs it in a Node 24 child process. */
export const graphileWorker018: GraphileLibrary<graphile.Logger> = {
  name: 'graphile-worker 0.18',
  module: graphile,
};
