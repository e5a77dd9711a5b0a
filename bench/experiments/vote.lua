-- wrk script: POST /vote?id=1&up=true (track 1 must be queued).
wrk.method = "POST"
wrk.path = "/vote?id=1&up=true"
