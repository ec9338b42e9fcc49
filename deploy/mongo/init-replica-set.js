// Initiates the three-member replica set `nexus` once; the event log needs a replica set for
// multi-document transactions and writes with w: "majority", j: true.
try {
  rs.status();
} catch (e) {
  rs.initiate({
    _id: "nexus",
    members: [
      { _id: 0, host: "mongo-1:27017" },
      { _id: 1, host: "mongo-2:27017" },
      { _id: 2, host: "mongo-3:27017" },
    ],
  });
}
