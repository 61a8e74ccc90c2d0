// Runs, but never listens: a worker that can never get ready.
setInterval(() => {}, 1000);
