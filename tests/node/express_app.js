// An ordinary Express app, as a PM2 user runs it: nothing clusterui-specific.
const express = require('express');

const app = express();
const port = Number(process.env.APP_PORT || 3000);

app.get('/', (req, res) => {
  res.send(`ok pid ${process.pid} instance ${process.env.NODE_APP_INSTANCE}\n`);
});
app.get('/slow', (req, res) => {
  setTimeout(() => res.send(`ok pid ${process.pid} slow\n`), Number(req.query.ms || 300));
});

const server = app.listen(port, () => {
  console.log(`listening on ${port}`);
  if (process.env.SEND_READY === '1') {
    setTimeout(() => process.send('ready'), Number(process.env.READY_DELAY_MS || 0));
  }
});

process.on('SIGINT', () => {
  console.log('SIGINT handler ran');
  server.close(() => process.exit(0));
});

// PM2's shutdown_with_message: the app is told 'shutdown' over IPC instead of a signal.
process.on('message', (message) => {
  if (message === 'shutdown') {
    console.log('shutdown message handled');
    server.close(() => process.exit(0));
  }
});
