import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native handles (fds, mappings) are per process: run test files in forked processes.
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
