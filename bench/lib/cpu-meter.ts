import os from 'node:os';

/** CPU used over a stretch of time, in cores: the whole machine's (every process), and this process's alone. */
export interface CpuUse {
  machineCores: number;
  processCores: number;
}

function machineBusyMs(): number {
  return os.cpus().reduce((sum, { times }) => sum + times.user + times.nice + times.sys + times.irq, 0);
}

/** Starts measuring; the function it returns gives the cores used since. */
export function startCpuMeter(): () => CpuUse {
  const wallStart = performance.now();
  const machineStart = machineBusyMs();
  const processStart = process.cpuUsage();
  return () => {
    const wallMs = performance.now() - wallStart;
    const own = process.cpuUsage(processStart);
    return {
      machineCores: (machineBusyMs() - machineStart) / wallMs,
      processCores: (own.user + own.system) / 1000 / wallMs,
    };
  };
}
