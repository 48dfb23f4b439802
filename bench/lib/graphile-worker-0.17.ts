import * as graphile from 'graphile-worker';
import type { GraphileLibrary } from './graphile-worker.js';

/** graphile-worker 0.17, in the bench's own process (Node 20). */
export const graphileWorker017: GraphileLibrary<graphile.Logger> = {
  name: 'graphile-worker 0.17',
  module: graphile,
};
