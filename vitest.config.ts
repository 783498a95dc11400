import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/bench/**', 'node_modules/**', 'dist/**'],
    // Native handles (fds, mappings, uv handles) are per process; forks keep tests isolated.
    pool: 'forks',
    testTimeout: 30_000,
  },
});
