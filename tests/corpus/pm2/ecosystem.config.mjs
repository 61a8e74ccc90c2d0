const apps = [{ name: "esm-app", script: "worker.js", node_args: ["--enable-source-maps"] }];
export default { apps };
