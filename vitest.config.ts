import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: {
    // The examples import the package by name, as a user's device does. Tests load them from
    // source: exactly 'mdevkit' is the model's entry point in src/, so a test and an example share
    // one instance of the model (instanceof MdevError, PciDevice, … hold across both).
    alias: [{ find: /^mdevkit$/, replacement: fileURLToPath(new URL('./src/index.ts', import.meta.url)) }],
  },
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/bench/**', 'node_modules/**', 'dist/**'],
    // Native handles (fds, mappings, uv handles) are per process; forks keep tests isolated.
    pool: 'forks',
    testTimeout: 30_000,
  },
});
