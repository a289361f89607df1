// graphile-worker as a benchmark peer: pre-inserts JOBS no-op jobs into
// SCHEMA (not timed), then times one worker burning them down until none
// is left in the table, with the batching settings graphile-worker's
// performance page documents (24 concurrent jobs, pool 25, local queue
// 500, batched completions; they arrived in 0.17) or,
// with MODE=defaults, its defaults (CONCURRENCY is then unused). Prints
// one JSON line.
//
// node burn.js CONNECTION_STRING SCHEMA JOBS CONCURRENCY MODE
"use strict";
const { Logger, run, makeWorkerUtils } = require("graphile-worker");

async function main() {
  const [connectionString, schema, jobsText, concurrencyText, mode] = process.argv.slice(2);
  const jobs = Number(jobsText);
  const concurrency = Number(concurrencyText);
  const utils = await makeWorkerUtils({ connectionString, schema });
  await utils.migrate();
  for (let done = 0; done < jobs; done += 5000) {
    const n = Math.min(5000, jobs - done);
    await utils.withPgClient((c) =>
      c.query(
        `select count(*) from ${schema}.add_jobs(array(select json_populate_record(null::${schema}.job_spec, ` +
          `json_build_object('identifier', 'noop', 'payload', '{}'::json)) from generate_series(1, $1)))`,
        [n],
      ),
    );
  }
  // The documented performance settings, or nothing at all (its defaults:
  // one job at a time, pool of 10).
  const settings = mode === "batching"
    ? {
      concurrentJobs: concurrency,
      maxPoolSize: concurrency + 1,
      localQueue: { size: 500 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    }
    : {};
  let ran = 0;
  const started = process.hrtime.bigint();
  const runner = await run({
    noHandleSignals: true,
    taskList: { noop: async () => { ran += 1; } },
    preset: {
      worker: {
        connectionString,
        schema,
        ...settings,
      },
    },
    logger: new Logger(() => () => {}),
  });
  // Done when the table is empty: graphile-worker deletes a job when it
  // completes, so this counts written completions, not only returned
  // tasks. The table is only probed once every task has returned, and
  // then with a probe that stops at the first row, so the check does not
  // load the database being measured.
  while (ran < jobs) await new Promise((r) => setTimeout(r, 1));
  for (;;) {
    const { rows } = await utils.withPgClient((c) => c.query(`select exists (select 1 from ${schema}._private_jobs) as left`));
    if (!rows[0].left) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await runner.stop();
  await utils.release();
  console.log(JSON.stringify({ jobs, ran, seconds, jobs_per_sec: jobs / seconds }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
