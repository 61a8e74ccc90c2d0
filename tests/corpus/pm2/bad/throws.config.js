const secret = require("./does-not-exist.json");
module.exports = { apps: [] };
